package wsproxy_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"golang.org/x/net/websocket"

	"github.com/wsproxy/wsproxy"
)

// echoBackend starts a WebSocket echo server and returns its ws:// URL.
func echoBackend() (string, func()) {
	s := httptest.NewServer(websocket.Server{
		Handshake: func(*websocket.Config, *http.Request) error { return nil },
		Handler: func(c *websocket.Conn) {
			defer c.Close()
			var msg string
			for websocket.Message.Receive(c, &msg) == nil {
				websocket.Message.Send(c, msg)
			}
		},
	})
	return "ws://" + s.Listener.Addr().String(), s.Close
}

// say opens a WebSocket to url as a page of origin would, sends msg and
// returns the answer.
func say(url, origin, msg string) (string, error) {
	cfg, err := websocket.NewConfig(url, origin)
	if err != nil {
		return "", err
	}
	c, err := websocket.DialConfig(cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := websocket.Message.Send(c, msg); err != nil {
		return "", err
	}
	var reply string
	err = websocket.Message.Receive(c, &reply)
	return reply, err
}

// Mount the proxy on a ServeMux route, as the Quick start
// (examples/quickstart) does.
func Example() {
	backend, stop := echoBackend()
	defer stop()

	p, err := wsproxy.New([]string{backend})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	mux := http.NewServeMux()
	mux.Handle("/ws", p) // no method: HTTP/2 WebSockets are CONNECT requests (RFC 8441)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	reply, err := say("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", srv.URL, "hello")
	fmt.Println(reply, err)
	// Output: hello <nil>
}

// Pages on other sites are refused unless listed.
func ExampleWithAllowedOrigins() {
	backend, stop := echoBackend()
	defer stop()
	p, _ := wsproxy.New([]string{backend}, wsproxy.WithAllowedOrigins("app.example.com", "*.example.org"))
	defer p.Close()
	srv := httptest.NewServer(p)
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")

	for _, origin := range []string{"https://app.example.com", "https://chat.example.org", "https://evil.example.net"} {
		_, err := say(url, origin, "hi")
		fmt.Println(origin, err == nil)
	}
	// Output:
	// https://app.example.com true
	// https://chat.example.org true
	// https://evil.example.net false
}

// One route serves both the page and its socket, like nginx's
// `map $http_upgrade $connection_upgrade`.
func ExampleWithFallback() {
	backend, stop := echoBackend()
	defer stop()
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "<html>chat</html>") })
	p, _ := wsproxy.New([]string{backend}, wsproxy.WithFallback(page))
	defer p.Close()
	srv := httptest.NewServer(p)
	defer srv.Close()

	resp, _ := http.Get(srv.URL)
	fmt.Println(resp.StatusCode)
	resp.Body.Close()
	reply, _ := say("ws"+strings.TrimPrefix(srv.URL, "http"), srv.URL, "socket")
	fmt.Println(reply)
	// Output:
	// 200
	// socket
}

// Pass the authenticated user to the backend in a header.
func ExampleWithRewrite() {
	s := httptest.NewServer(websocket.Server{
		Handshake: func(*websocket.Config, *http.Request) error { return nil },
		Handler: func(c *websocket.Conn) {
			websocket.Message.Send(c, "hello "+c.Request().Header.Get("X-User"))
		},
	})
	defer s.Close()
	p, _ := wsproxy.New([]string{"ws://" + s.Listener.Addr().String()}, wsproxy.WithRewrite(func(pr *wsproxy.ProxyRequest) {
		pr.Out.Header.Set("X-User", "alice") // in real code: from the verified session
	}))
	defer p.Close()
	srv := httptest.NewServer(p)
	defer srv.Close()

	cfg, _ := websocket.NewConfig("ws"+strings.TrimPrefix(srv.URL, "http"), srv.URL)
	c, _ := websocket.DialConfig(cfg)
	defer c.Close()
	var msg string
	websocket.Message.Receive(c, &msg)
	fmt.Println(msg)
	// Output: hello alice
}

// Shut down the proxy's tunnels, then the HTTP server.
func ExampleProxy_Shutdown() {
	backend, stop := echoBackend()
	defer stop()
	p, _ := wsproxy.New([]string{backend})
	srv := httptest.NewServer(p)
	defer srv.Close()

	cfg, _ := websocket.NewConfig("ws"+strings.TrimPrefix(srv.URL, "http"), srv.URL)
	c, _ := websocket.DialConfig(cfg)
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fmt.Println(p.Shutdown(ctx), p.Stats().Open) // the tunnel got 1001
	fmt.Println(srv.Config.Shutdown(ctx))        // plain HTTP; it does not see tunnels
	// Output:
	// <nil> 0
	// <nil>
}
