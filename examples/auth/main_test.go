package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/websocket"

	"github.com/wsproxy/wsproxy/examples/internal/echo"
)

var secret = []byte("s3cret")

func mustSign(t *testing.T, method jwt.SigningMethod, key any, claims jwt.Claims) string {
	t.Helper()
	token, err := jwt.NewWithClaims(method, claims).SignedString(key)
	require.NoError(t, err)
	return token
}

func TestVerify(t *testing.T) {
	t.Parallel()
	good, err := sign(secret, "alice", time.Hour)
	require.NoError(t, err)
	expired, err := sign(secret, "alice", -time.Minute)
	require.NoError(t, err)
	forged, err := sign([]byte("other"), "alice", time.Hour)
	require.NoError(t, err)
	inAnHour := jwt.NewNumericDate(time.Now().Add(time.Hour))

	tests := []struct {
		name string
		give string
		want error
	}{
		{"expired", expired, jwt.ErrTokenExpired},
		{"other secret", forged, jwt.ErrTokenSignatureInvalid},
		{"alg none", mustSign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType,
			jwt.RegisteredClaims{Subject: "alice", ExpiresAt: inAnHour}), jwt.ErrTokenSignatureInvalid},
		{"HS512 with the same secret", mustSign(t, jwt.SigningMethodHS512, secret,
			jwt.RegisteredClaims{Subject: "alice", ExpiresAt: inAnHour}), jwt.ErrTokenSignatureInvalid},
		{"no expiry", mustSign(t, jwt.SigningMethodHS256, secret,
			jwt.RegisteredClaims{Subject: "alice"}), jwt.ErrTokenRequiredClaimMissing},
		{"no subject", mustSign(t, jwt.SigningMethodHS256, secret,
			jwt.RegisteredClaims{ExpiresAt: inAnHour}), errNoSubject},
		{"not a token", "abc", jwt.ErrTokenMalformed},
		{"missing", "", jwt.ErrTokenMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := verify(secret, tt.give)
			assert.ErrorIs(t, err, tt.want)
		})
	}
	user, err := verify(secret, good)
	require.NoError(t, err)
	assert.Equal(t, "alice", user)
}

// TestAuth runs the example's proxy and middleware in front of its built-in
// backend, which greets the user named in X-User.
func TestAuth(t *testing.T) {
	t.Parallel()
	backend, stop, err := echo.OrBuiltIn("", func(r *http.Request) string { return "hello " + r.Header.Get("X-User") })
	require.NoError(t, err)
	defer stop()
	p, err := newProxy(backend)
	require.NoError(t, err)
	srv := httptest.NewServer(requireUser(secret, p))
	defer func() { p.Close(); srv.Close() }()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")

	good, err := sign(secret, "alice", time.Hour)
	require.NoError(t, err)
	for _, header := range []http.Header{
		{"Cookie": {"session=" + good}, "X-User": {"mallory"}},
		{"Authorization": {"Bearer " + good}},
	} {
		cfg, err := websocket.NewConfig(url, srv.URL)
		require.NoError(t, err)
		cfg.Header = header
		c, err := websocket.DialConfig(cfg)
		require.NoError(t, err)
		var msg string
		require.NoError(t, websocket.Message.Receive(c, &msg))
		assert.Equal(t, "hello alice", msg, "the backend got the verified user, not the client's X-User")
		require.NoError(t, websocket.Message.Send(c, "ping"))
		require.NoError(t, websocket.Message.Receive(c, &msg))
		assert.Equal(t, "ping", msg)
		c.Close()
	}

	expired, err := sign(secret, "alice", -time.Minute)
	require.NoError(t, err)
	for _, header := range []http.Header{{}, {"Cookie": {"session=" + expired}}, {"Authorization": {"Bearer x.y.z"}}} {
		req, err := http.NewRequest(http.MethodGet, srv.URL, nil)
		require.NoError(t, err)
		req.Header = header
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	}
	st := p.Stats()
	assert.Equal(t, int64(2), st.Total, "only the two good handshakes reached the proxy")
	assert.Zero(t, st.Rejected)
}
