package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/websocket"

	"github.com/wsproxy/wsproxy"
)

func TestAuth(t *testing.T) {
	secret := []byte("s3cret")
	backend := httptest.NewServer(websocket.Server{
		Handshake: func(*websocket.Config, *http.Request) error { return nil },
		Handler: func(c *websocket.Conn) {
			websocket.Message.Send(c, "hello "+c.Request().Header.Get("X-User"))
		},
	})
	defer backend.Close()
	p, err := wsproxy.New([]string{"ws://" + backend.Listener.Addr().String()}, wsproxy.WithRewrite(func(pr *wsproxy.ProxyRequest) {
		pr.Out.Header.Del("X-User")
		if user, ok := pr.In.Context().Value(userKey{}).(string); ok {
			pr.Out.Header.Set("X-User", user)
		}
	}))
	require.NoError(t, err)
	srv := httptest.NewServer(requireUser(secret, p))
	defer func() { p.Close(); srv.Close() }()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")

	dial := func(header http.Header) (string, error) {
		cfg, _ := websocket.NewConfig(url, srv.URL)
		cfg.Header = header
		c, err := websocket.DialConfig(cfg)
		if err != nil {
			return "", err
		}
		defer c.Close()
		var msg string
		err = websocket.Message.Receive(c, &msg)
		return msg, err
	}
	good := sign(secret, claims{Sub: "alice", Exp: time.Now().Add(time.Hour).Unix()})
	msg, err := dial(http.Header{"Cookie": {"session=" + good}, "X-User": {"mallory"}})
	require.NoError(t, err)
	assert.Equal(t, "hello alice", msg)

	msg, err = dial(http.Header{"Authorization": {"Bearer " + good}})
	require.NoError(t, err)
	assert.Equal(t, "hello alice", msg)

	expired := sign(secret, claims{Sub: "alice", Exp: time.Now().Add(-time.Minute).Unix()})
	forged := sign([]byte("other"), claims{Sub: "alice", Exp: time.Now().Add(time.Hour).Unix()})
	for _, h := range []http.Header{nil, {"Cookie": {"session=" + expired}}, {"Cookie": {"session=" + forged}}} {
		_, err := dial(h)
		assert.Error(t, err)
	}
}
