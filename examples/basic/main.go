// Command basic mounts wsproxy on an http.ServeMux route, behind a logging
// middleware, next to ordinary handlers:
//
//	go run ./examples/basic -backend ws://127.0.0.1:9001
//
// The middleware wraps the ResponseWriter and implements Unwrap, which is
// all wsproxy needs to hijack the connection through it.
package main

import (
	"context"
	"flag"
	"log"
	"log/slog"
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
	flag.Parse()

	p, err := wsproxy.New([]string{*backend},
		wsproxy.WithAllowedOrigins("localhost"), // any port: a page served by a dev server
		wsproxy.WithIdleTimeout(10*time.Minute),
	)
	if err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.Handle("GET /ws/{room}", p) // the path, room included, goes to the backend
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })

	srv := &http.Server{
		Addr:              *listen,
		Handler:           logRequests(mux),
		ReadHeaderTimeout: 10 * time.Second, // bounds slow handshakes (slowloris)
	}
	go func() {
		log.Printf("listening on http://%s, proxying /ws/{room} to %s", *listen, *backend)
		if err := srv.ListenAndServe(); err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(shutdown) // plain HTTP requests
	p.Shutdown(shutdown)   // WebSocket tunnels: the server does not see them
}

// statusRecorder is a typical logging middleware's ResponseWriter.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController (and so wsproxy) reach the
// connection underneath.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusSwitchingProtocols}
		next.ServeHTTP(rec, r)
		slog.Info("request", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start))
	})
}
