// Command demo is the nginx "proxy a whole site" configuration in Go: two
// chat backends that each serve the page, its assets, an API and the
// WebSocket, and one wsproxy in front of them whose whole handler is the
// proxy. WithHTTP sends pages and API calls through the same targets as the
// sockets, and a sticky cookie keeps each browser on the backend that
// served it first. All on loopback; it prints the URL to open:
//
//	go run ./examples/demo
//
// Each tab shows the backend that served its page, its API polls and its
// socket. /echo is a plain echo for command-line clients.
package main

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/websocket"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/examples/internal/echo"
)

//go:embed static
var static embed.FS

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address of the proxy (port 0 picks a free one)")
	flag.Parse()
	if err := run(*listen); err != nil {
		log.Fatal(err)
	}
}

func run(listen string) error {
	p, err := newProxy()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	// The proxy is the server's whole handler: every path goes to the
	// backends, WebSockets (GET or HTTP/2 CONNECT) and the rest alike.
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("wsproxy demo listening on http://%s/ - open it in a browser\n", ln.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	fmt.Println("shutting down: every tab gets close code 1001")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The proxy first: its tunnels get 1001; the server does not see them.
	if err := p.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return srv.Shutdown(ctx)
}

// newProxy starts the two backends and returns the proxy in front of them.
func newProxy() (*wsproxy.Proxy, error) {
	room := newRoom()
	var targets []string
	for _, name := range []string{"backend-a", "backend-b"} {
		addr, err := serveBackend(name, room)
		if err != nil {
			return nil, err
		}
		targets = append(targets, "http://"+addr)
	}
	log.Printf("backends: %v", targets)
	// The seed configuration: one route, one pool, sessions that stick.
	return wsproxy.New(targets,
		wsproxy.WithHTTP(),
		wsproxy.WithStickyCookie(http.Cookie{Name: "wsproxy_lb", Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode}),
		wsproxy.WithBalancer(wsproxy.LeastConn()), // a new browser goes to the backend with fewer sockets
		wsproxy.WithPingInterval(30*time.Second),
		wsproxy.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))),
	)
}

// serveBackend starts one backend on a free loopback port: the page and its
// assets, /api/stats, /ws (the chat room) and /echo.
func serveBackend(name string, room *room) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	assets, err := fs.Sub(static, "static")
	if err != nil {
		return "", err
	}
	var requests atomic.Int64
	room.mu.Lock()
	room.requests[name] = &requests
	room.mu.Unlock()
	mux := http.NewServeMux()
	mux.Handle("/", http.FileServerFS(assets))
	mux.HandleFunc("GET /api/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(room.stats(name))
	})
	accept := func(*websocket.Config, *http.Request) error { return nil } // the proxy checked the origin
	mux.Handle("/ws", websocket.Server{Handshake: accept, Handler: func(c *websocket.Conn) { room.join(c, name) }})
	mux.Handle("/echo", echo.Handler(nil))
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("X-Backend", name)
		mux.ServeHTTP(w, r)
	})
	go (&http.Server{Handler: counted, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
	return ln.Addr().String(), nil
}

// room is one chat room shared by both backends, as a pub/sub service would
// be in a real deployment; it also knows who is connected where.
type room struct {
	mu       sync.Mutex
	members  map[*websocket.Conn]string
	requests map[string]*atomic.Int64 // HTTP requests each backend served; written before serving
}

type chatMessage struct {
	Backend string `json:"backend"`
	Text    string `json:"text"`
	System  bool   `json:"system,omitempty"`
}

// backendStats is what /api/stats answers: the backend that answered, and
// for each backend its sockets and the HTTP requests it served.
type backendStats struct {
	ServedBy string           `json:"served_by"`
	Sockets  map[string]int   `json:"sockets"`
	Requests map[string]int64 `json:"requests"`
}

func newRoom() *room {
	return &room{members: make(map[*websocket.Conn]string), requests: make(map[string]*atomic.Int64)}
}

func (r *room) stats(servedBy string) backendStats {
	s := backendStats{ServedBy: servedBy, Sockets: map[string]int{}, Requests: map[string]int64{}}
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, n := range r.requests {
		s.Sockets[name] = 0
		s.Requests[name] = n.Load()
	}
	for _, backend := range r.members {
		s.Sockets[backend]++
	}
	return s
}

func (r *room) join(c *websocket.Conn, backend string) {
	defer c.Close()
	r.mu.Lock()
	r.members[c] = backend
	r.mu.Unlock()
	websocket.JSON.Send(c, chatMessage{Backend: backend, Text: "connected to " + backend, System: true})
	defer func() {
		r.mu.Lock()
		delete(r.members, c)
		r.mu.Unlock()
	}()
	for {
		var text string
		if err := websocket.Message.Receive(c, &text); err != nil {
			return
		}
		r.broadcast(chatMessage{Backend: backend, Text: text})
	}
}

func (r *room) broadcast(m chatMessage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.members {
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		websocket.JSON.Send(c, m)
	}
}
