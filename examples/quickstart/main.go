package main

import (
	"context"
	"errors"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wsproxy/wsproxy"
)

func main() {
	// The backends come from the command line: ws://10.0.0.1:9001 ws://10.0.0.2:9001
	p, err := wsproxy.New(os.Args[1:])
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	// No method in the pattern: browsers open WebSockets with GET over HTTP/1.1
	// but with CONNECT over HTTP/2 (RFC 8441), and "GET /ws" would answer those 405.
	mux.Handle("/ws", p)
	srv := &http.Server{Addr: "127.0.0.1:8080", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	log.Printf("listening on http://%s, WebSockets on /ws", srv.Addr)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// The proxy first: every tunnel gets close code 1001 and ends. The server
	// does not see hijacked tunnels, and would wait for HTTP/2 ones until ctx ends.
	if err := p.Shutdown(ctx); err != nil {
		log.Print(err)
	}
	if err := srv.Shutdown(ctx); err != nil {
		log.Print(err)
	}
}
