// Command echo is a WebSocket echo server to try wsproxy against: every
// message comes back as it was sent.
//
//	go run ./examples/echo                            # ws://127.0.0.1:9001, any path
//	go run ./examples/echo -listen 127.0.0.1:9002
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

	"github.com/wsproxy/wsproxy/examples/internal/echo"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9001", "address to listen on")
	flag.Parse()

	srv := &http.Server{Addr: *listen, Handler: echo.Handler(nil), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	log.Printf("echo backend listening on ws://%s", *listen)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	srv.Close() // a backend going away: the proxy sends its clients 1011
}
