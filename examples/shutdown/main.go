// Command shutdown shows the order of a graceful stop: on SIGINT or
// SIGTERM, stop accepting plain HTTP, then close every WebSocket tunnel
// with close code 1001, waiting at most -grace for the close handshakes.
//
//	go run ./examples/shutdown -backend ws://127.0.0.1:9001
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wsproxy/wsproxy"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	backend := flag.String("backend", "ws://127.0.0.1:9001", "WebSocket backend")
	grace := flag.Duration("grace", 15*time.Second, "how long tunnels get to close politely")
	flag.Parse()

	p, err := wsproxy.New([]string{*backend})
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Addr: *listen, Handler: p, ReadHeaderTimeout: 10 * time.Second}
	// http.Server.Shutdown does not see hijacked connections; when it is
	// called, make the proxy refuse new upgrades too, at the same moment.
	srv.RegisterOnShutdown(func() {
		ctx, cancel := context.WithTimeout(context.Background(), *grace)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			log.Printf("tunnels still open after %v were closed: %v", *grace, err)
		}
	})

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	log.Printf("listening on %s; Ctrl-C to stop", *listen)
	<-ctx.Done()
	stop() // a second Ctrl-C kills the process at once

	log.Printf("shutting down: %d tunnels open", p.Stats().Open)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	srv.Shutdown(shutdownCtx) // runs the RegisterOnShutdown hook in its own goroutine
	// Wait for the tunnels as well: Proxy.Shutdown is idempotent.
	if err := p.Shutdown(shutdownCtx); err != nil {
		log.Print(err)
	}
	log.Print("all tunnels closed")
}
