package wsproxy

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	engine "github.com/wsproxy/wsproxy/internal/tunnel"
	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// closeReasons is every Reason constant: CloseInfo.Reason is one of these
// or empty, which is what makes it a metric label (examples/metrics/wsprom
// keeps the same list and checks it against this file's package).
var closeReasons = []string{
	ReasonShutdown,
	ReasonIdleTimeout,
	ReasonMaxLifetime,
	ReasonTargetRemoved,
	ReasonBackendNotResponding,
	ReasonClientNotResponding,
	ReasonBackendConnectionLost,
	ReasonClientConnectionLost,
	ReasonHalfCloseTimeout,
	ReasonMessageTooBig,
	ReasonProtocolError,
}

// TestCloseReasons ends a tunnel by each way the proxy knows and checks
// that CloseInfo.Reason names it with a constant of the fixed set, free text
// going to Detail; the table covers every constant.
func TestCloseReasons(t *testing.T) {
	t.Parallel()
	// resetOnMessage is a backend whose connection breaks (a reset, as when
	// its process crashes) when the client sends a message.
	resetOnMessage := func(t *testing.T) string {
		return upgradedBackend(t, nil, func(c *wstest.Conn) {
			if _, _, err := c.ReadMessage(); err == nil {
				c.Conn.(*net.TCPConn).SetLinger(0)
			}
		})
	}
	silent := func(t *testing.T) string { return scriptedSilentBackend(t, nil) }
	tests := []struct {
		name       string
		backend    func(t *testing.T) string // default: an echo backend
		opts       []Option
		end        func(t *testing.T, p *Proxy, c *wstest.Conn)
		want       string
		wantDetail string
	}{
		{name: "peers close", want: "", end: func(t *testing.T, _ *Proxy, c *wstest.Conn) {
			require.NoError(t, c.WriteClose(1000, "done"))
			assert.Equal(t, 1000, c.ReadClose())
		}},
		{name: "shutdown", want: ReasonShutdown, end: func(t *testing.T, p *Proxy, c *wstest.Conn) {
			go c.ReadClose()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			assert.NoError(t, p.Shutdown(ctx))
		}},
		{name: "close", want: ReasonShutdown, end: func(t *testing.T, p *Proxy, _ *wstest.Conn) {
			assert.NoError(t, p.Close())
		}},
		{name: "idle timeout", want: ReasonIdleTimeout, opts: []Option{WithIdleTimeout(20 * time.Millisecond)}},
		{name: "max lifetime", want: ReasonMaxLifetime, opts: []Option{WithMaxLifetime(20 * time.Millisecond)}},
		{name: "target removed", want: ReasonTargetRemoved, opts: []Option{WithDrainTimeout(time.Millisecond)},
			end: func(t *testing.T, p *Proxy, c *wstest.Conn) {
				require.NoError(t, p.SetTargets([]string{newEcho(t)}))
				assert.Equal(t, wsframe.CloseGoingAway, c.ReadClose())
			}},
		{name: "backend not responding", want: ReasonBackendNotResponding, backend: silent,
			opts: []Option{WithPingInterval(20 * time.Millisecond)}},
		{name: "client not responding", want: ReasonClientNotResponding,
			opts: []Option{WithPingInterval(20 * time.Millisecond)},
			end:  func(*testing.T, *Proxy, *wstest.Conn) {}}, // reads nothing, so answers no ping
		{name: "backend connection lost", want: ReasonBackendConnectionLost, backend: resetOnMessage,
			end: func(t *testing.T, _ *Proxy, c *wstest.Conn) {
				require.NoError(t, c.WriteMessage(wsframe.OpText, []byte("crash")))
				assert.Equal(t, wsframe.CloseInternalError, c.ReadClose())
			}},
		{name: "client connection lost", want: ReasonClientConnectionLost, end: func(t *testing.T, _ *Proxy, c *wstest.Conn) {
			c.Conn.(*net.TCPConn).SetLinger(0)
			c.Close()
		}},
		{name: "half-close timeout", want: ReasonHalfCloseTimeout, backend: neverHalfCloses,
			opts: []Option{WithHalfCloseTimeout(20 * time.Millisecond)},
			end: func(t *testing.T, _ *Proxy, c *wstest.Conn) {
				require.NoError(t, c.Conn.(*net.TCPConn).CloseWrite())
				c.ReadClose()
			}},
		{name: "message too big", want: ReasonMessageTooBig, opts: []Option{WithMaxMessageSize(10)},
			end: func(t *testing.T, _ *Proxy, c *wstest.Conn) {
				require.NoError(t, c.WriteMessage(wsframe.OpText, make([]byte, 11)))
				assert.Equal(t, wsframe.CloseMessageTooBig, c.ReadClose())
			}},
		{name: "protocol error", want: ReasonProtocolError,
			wantDetail: "websocket protocol error: unmasked frame from the client",
			end: func(t *testing.T, _ *Proxy, c *wstest.Conn) {
				_, err := c.Conn.Write(wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpText, Payload: []byte("bare")}, false))
				require.NoError(t, err)
				_, _, err = c.ReadMessage()
				var ce *wstest.CloseError
				require.ErrorAs(t, err, &ce)
				assert.Equal(t, &wstest.CloseError{Code: wsframe.CloseProtocolError, Reason: "websocket protocol error: unmasked frame from the client"}, ce)
			}},
	}
	var covered []string
	for _, tt := range tests {
		if tt.want != "" {
			covered = append(covered, tt.want)
		}
	}
	slices.Sort(covered)
	assert.ElementsMatch(t, closeReasons, slices.Compact(covered), "every reason has a case, and every case a listed reason")

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			backend := newEcho
			if tt.backend != nil {
				backend = tt.backend
			}
			hook, closed := closeInfoHook()
			// A short close timeout: some cases leave a close frame unanswered.
			p, url := newProxy(t, []string{backend(t)}, append(tt.opts, hook, WithCloseTimeout(50*time.Millisecond))...)
			c := dial(t, url)
			if tt.end == nil {
				c.ReadClose() // the proxy ends the tunnel by itself
			} else {
				tt.end(t, p, c)
			}
			select {
			case ci := <-closed:
				assert.Equal(t, tt.want, ci.Reason)
				assert.Equal(t, tt.wantDetail, ci.Detail)
				if ci.Reason != "" {
					assert.Contains(t, closeReasons, ci.Reason)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the tunnel did not close")
			}
		})
	}
}

// TestEngineReasons: the reasons the engine ends a tunnel with are the
// proxy's Reason constants, which users match on.
func TestEngineReasons(t *testing.T) {
	for engineReason, reason := range map[string]string{
		engine.ReasonIdleTimeout:           ReasonIdleTimeout,
		engine.ReasonMaxLifetime:           ReasonMaxLifetime,
		engine.ReasonBackendNotResponding:  ReasonBackendNotResponding,
		engine.ReasonClientNotResponding:   ReasonClientNotResponding,
		engine.ReasonBackendConnectionLost: ReasonBackendConnectionLost,
		engine.ReasonClientConnectionLost:  ReasonClientConnectionLost,
		engine.ReasonHalfCloseTimeout:      ReasonHalfCloseTimeout,
		engine.ReasonMessageTooBig:         ReasonMessageTooBig,
		engine.ReasonProtocolError:         ReasonProtocolError,
	} {
		assert.Equal(t, reason, engineReason)
	}
}
