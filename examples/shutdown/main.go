// Command shutdown shows the order of a graceful stop: on SIGINT or
// SIGTERM, close every WebSocket tunnel with close code 1001, waiting at
// most -grace for the close handshakes, then stop the HTTP server.
//
//	go run ./examples/shutdown                               # built-in echo backend
//	go run ./examples/shutdown -backend ws://127.0.0.1:9001  # yours
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/examples/internal/echo"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	backend := flag.String("backend", "", "WebSocket backend URL (default: a built-in echo backend)")
	grace := flag.Duration("grace", 15*time.Second, "how long tunnels get to close politely")
	flag.Parse()
	target, stopBackend, err := echo.OrBuiltIn(*backend, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer stopBackend()

	p, err := wsproxy.New([]string{target})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	log.Printf("listening on http://%s; Ctrl-C to stop", ln.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	stop() // a second Ctrl-C kills the process at once

	log.Printf("shutting down: %d tunnels open", p.Stats().Open)
	ctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	// The proxy first. New upgrades get 503 from now on, and every tunnel
	// gets 1001. http.Server.Shutdown does not see hijacked connections, and
	// it would wait for HTTP/2 tunnels (they live in their handlers) until
	// ctx ends, leaving no time for their close frames.
	if err := p.Shutdown(ctx); err != nil {
		log.Printf("tunnels still open after %v were closed: %v", *grace, err)
	} else {
		log.Print("all tunnels closed")
	}
	// Then plain HTTP: the listener, idle keep-alive connections, and
	// requests in progress.
	if err := srv.Shutdown(ctx); err != nil {
		log.Print(err)
	}
}
