package wsproxy_test

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/websocket"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/internal/snippet"
)

// TestReadmeWholeSite runs the README's "Proxying a whole site" code as
// written, on the addresses it names, and checks that the README still
// shows exactly this code.
func TestReadmeWholeSite(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:9301", "127.0.0.1:9302"} {
		serveSite(t, addr)
	}

	// README: whole site
	p, err := wsproxy.New([]string{"ws://127.0.0.1:9301", "ws://127.0.0.1:9302"},
		wsproxy.WithHTTP(),
		wsproxy.WithStickyCookie(http.Cookie{Name: "wsproxy_lb", Path: "/", HttpOnly: true}),
	)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Addr: "127.0.0.1:8080", Handler: p, ReadHeaderTimeout: 10 * time.Second}
	// end README

	ln, err := net.Listen("tcp", "127.0.0.1:0") // the README listens on :8080; the test anywhere
	require.NoError(t, err)
	go srv.Serve(ln)
	t.Cleanup(func() {
		p.Close()
		srv.Close()
	})
	base := "http://" + ln.Addr().String()

	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	c := &http.Client{Jar: jar, Timeout: 5 * time.Second}
	resp, err := c.Get(base + "/")
	require.NoError(t, err)
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	home := resp.Header.Get("X-Backend")
	require.NotEmpty(t, home)
	assert.Equal(t, "page from "+home, string(page))
	for range 4 {
		resp, err := c.Get(base + "/")
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, home, resp.Header.Get("X-Backend"), "the cookie keeps the client on its backend")
	}

	// The socket of the page goes to the same backend.
	cfg, err := websocket.NewConfig("ws://"+ln.Addr().String()+"/ws", base)
	require.NoError(t, err)
	for _, ck := range jar.Cookies(resp.Request.URL) { // a jar keeps cookies of http URLs only
		cfg.Header.Add("Cookie", ck.String())
	}
	ws, err := websocket.DialConfig(cfg)
	require.NoError(t, err)
	defer ws.Close()
	var msg string
	require.NoError(t, websocket.Message.Receive(ws, &msg))
	assert.Equal(t, "hello from "+home, msg)

	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	self, err := os.ReadFile("wholesite_test.go")
	require.NoError(t, err)
	shown := snippet.Between(t, string(readme), "<!-- whole site: wholesite_test.go -->\n```go\n", "```")
	code := snippet.Between(t, string(self), "// README: whole site\n", "\t// end README")
	assert.Equal(t, shown, snippet.Dedent(code, 1), "README.md's whole-site snippet differs from the tested code")
}

// serveSite serves a page and a WebSocket greeting that name addr.
func serveSite(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err, "the README's backend address must be free")
	mux := http.NewServeMux()
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) {
		websocket.Message.Send(c, "hello from "+addr)
		io.Copy(io.Discard, c)
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "page from "+addr)
	})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", addr)
		mux.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
	})
}
