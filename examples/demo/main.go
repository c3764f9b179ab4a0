// Command demo runs two WebSocket chat backends, a wsproxy in front of them
// and a chat page, all on loopback, and prints the URL to open:
//
//	go run ./examples/demo
//
// The page shows which backend each browser tab was given and the live
// number of tunnels per backend, read from Proxy.Stats. The proxy also
// serves /echo, a plain echo, for trying the proxy with any client:
//
//	websocat ws://127.0.0.1:8080/echo
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/net/websocket"

	"github.com/wsproxy/wsproxy"
)

//go:embed index.html
var page []byte

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address of the proxy (port 0 picks a free one)")
	flag.Parse()
	if err := run(*listen); err != nil {
		log.Fatal(err)
	}
}

func run(listen string) error {
	room := newRoom()
	var targets []string
	for _, name := range []string{"backend-a", "backend-b"} {
		addr, err := serveBackend(name, room)
		if err != nil {
			return err
		}
		targets = append(targets, "ws://"+addr)
	}

	p, err := wsproxy.New(targets,
		wsproxy.WithBalancer(wsproxy.LeastConn()),
		wsproxy.WithPingInterval(30*time.Second),
		wsproxy.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))),
	)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /ws", p)
	mux.Handle("GET /echo", p)
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(p.Stats())
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(page)
	})

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("wsproxy demo: open http://%s/ (backends %v)\n", ln.Addr(), targets)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	fmt.Println("shutting down: tunnels get a 1001 close frame")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(shutdownCtx)
	if err := p.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// serveBackend starts one backend on a free loopback port. /ws joins the
// shared chat room; /echo sends every message back.
func serveBackend(name string, room *room) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	accept := func(*websocket.Config, *http.Request) error { return nil } // the proxy checked the origin
	mux := http.NewServeMux()
	mux.Handle("/ws", websocket.Server{Handshake: accept, Handler: func(c *websocket.Conn) {
		room.join(c, name)
	}})
	mux.Handle("/echo", websocket.Server{Handshake: accept, Handler: func(c *websocket.Conn) {
		defer c.Close() // answers the client's close frame (x/net/websocket sends 1000)
		for {
			var msg []byte
			if err := websocket.Message.Receive(c, &msg); err != nil {
				return
			}
			// x/net/websocket does not report a frame's type: valid
			// UTF-8 goes back as text, the rest as binary.
			if utf8.Valid(msg) {
				err = websocket.Message.Send(c, string(msg))
			} else {
				err = websocket.Message.Send(c, msg)
			}
			if err != nil {
				return
			}
		}
	}})
	go http.Serve(ln, mux)
	return ln.Addr().String(), nil
}

// room is one chat room shared by both backends, as a pub/sub service would
// be in a real deployment.
type room struct {
	mu      sync.Mutex
	members map[*websocket.Conn]string
}

type chatMessage struct {
	Backend string `json:"backend"`
	Text    string `json:"text"`
	System  bool   `json:"system,omitempty"`
}

func newRoom() *room { return &room{members: make(map[*websocket.Conn]string)} }

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
