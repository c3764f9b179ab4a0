package wsproxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNewRefusesBadOptions: options that are nil, conflict with each other
// or point discovery at a target string that can never parse make New fail
// with ErrBadOption, naming what is wrong, instead of panicking or being
// accepted silently.
func TestNewRefusesBadOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		give     []Option
		wantErr  error
		wantMsgs []string // each part must be in the message
	}{
		{"nil option", []Option{WithDialTimeout(time.Second), nil}, ErrBadOption, []string{"option 2 is nil"}},
		{"retry on 5xx without retries", []Option{WithRetry(1, 0), WithRetryOn5xx()}, ErrBadOption,
			[]string{"WithRetryOn5xx", "WithRetry(1"}},
		{"allowed origins with the check off", []Option{WithAllowedOrigins("app.example.com"), WithInsecureSkipOriginCheck()}, ErrBadOption,
			[]string{"WithAllowedOrigins", "WithInsecureSkipOriginCheck"}},
		{"health check interval", []Option{WithHealthCheck(HealthCheck{Interval: -1})}, ErrBadOption,
			[]string{"Interval -1ns is negative"}},
		{"health check path", []Option{WithHealthCheck(HealthCheck{Path: "health"})}, ErrBadOption,
			[]string{`Path "health" does not start with /`}},
		{"health check fall", []Option{WithHealthCheck(HealthCheck{Fall: -2})}, ErrBadOption,
			[]string{"Fall -2 is negative"}},
		{"discovery target typo", []Option{WithDiscovery(DNSResolver(nil, "ws//chat.internal:8080"), time.Second)}, ErrBadTarget,
			[]string{"WithDiscovery", "ws//chat.internal:8080"}},
		{"discovery target bad parameter", []Option{WithDiscovery(DNSResolver(nil, "ws://chat.internal:8080 wieght=2"), time.Second)}, ErrBadTarget,
			[]string{"WithDiscovery", "wieght=2"}},
		{"SRV target with weight", []Option{WithDiscovery(SRVResolver(nil, "ws://_chat._tcp.internal weight=2"), time.Second)}, ErrBadTarget,
			[]string{"WithDiscovery", "SRV records"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Static targets are given too: discovery must still be checked.
			p, err := New([]string{"ws://127.0.0.1:1"}, tt.give...)
			if !assert.Nil(t, p) {
				p.Close()
			}
			require.ErrorIs(t, err, ErrBadOption)
			require.ErrorIs(t, err, tt.wantErr)
			for _, m := range tt.wantMsgs {
				assert.Contains(t, err.Error(), m)
			}
		})
	}
	t.Run("each alone is fine", func(t *testing.T) {
		t.Parallel()
		for _, opts := range [][]Option{
			{WithRetry(1, 0)}, {WithRetryOn5xx()}, {WithRetry(2, 0), WithRetryOn5xx()},
			{WithAllowedOrigins("app.example.com")}, {WithInsecureSkipOriginCheck()},
			{WithDiscovery(DNSResolver(nil, "ws://chat.internal:8080/ws weight=2"), time.Hour)},
			{WithDiscovery(SRVResolver(nil, "wss://_chat._tcp.internal/ws max_conns=10"), time.Hour)},
		} {
			p, err := New([]string{"ws://127.0.0.1:1"}, opts...)
			require.NoError(t, err)
			p.Close()
		}
	})
}

// TestErrorStringsSayEachPartOnce: an error that passes through several
// layers names the package once; errors.Is and errors.As still see every
// layer.
func TestErrorStringsSayEachPartOnce(t *testing.T) {
	t.Parallel()
	dead := "ws://" + refusingAddr(t)
	rejected := make(chan error, 1)
	_, url := newProxy(t, []string{dead}, WithHooks(Hooks{OnReject: func(_ *http.Request, err error) { rejected <- err }}))
	resp, _, _ := rawRequest(t, url, upgradeRequest(url))
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	err := <-rejected
	assert.Equal(t, 1, strings.Count(err.Error(), "wsproxy:"), "%q", err.Error())
	assert.True(t, strings.HasPrefix(err.Error(), "wsproxy: dial "+dead+": backend dial failed: "), "%q", err.Error())
	assert.ErrorIs(t, err, ErrDial)
	var be *BackendError
	require.ErrorAs(t, err, &be)
	assert.Equal(t, "dial", be.Op)

	tests := []struct {
		name string
		give error
		want error
	}{
		{"backend handshake", &BackendError{Target: "ws://b", Op: "handshake", Err: fmt.Errorf("%w: %w", ErrBackendHandshake, context.DeadlineExceeded)}, ErrBackendHandshake},
		{"invalid 101", &BackendError{Target: "ws://b", Op: "upgrade", Err: fmt.Errorf("%w: status 101", ErrInvalidUpgrade)}, ErrInvalidUpgrade},
		{"discovery", discoveryError(fmt.Errorf("%w %q: missing host", ErrBadTarget, "ws://")), ErrBadTarget},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, 1, strings.Count(tt.give.Error(), "wsproxy:"), "%q", tt.give.Error())
			assert.ErrorIs(t, tt.give, tt.want)
		})
	}
	var be2 *BackendError
	assert.True(t, errors.As(tests[0].give, &be2))
	assert.True(t, be2.Timeout())
}
