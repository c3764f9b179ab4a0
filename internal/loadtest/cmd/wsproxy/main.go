// Command wsproxy runs the library as its own process, so the benchmark can
// measure its memory by pid.
//
//	wsproxy -listen 127.0.0.1:9201 -target ws://127.0.0.1:9200 [-pprof 127.0.0.1:9206]
//	        [-tls-cert cert.pem -tls-key key.pem]   TLS in front (Server.ServeTLS), plain backend
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // served only on the -pprof address
	"os"
	"os/signal"
	"runtime"
	"runtime/metrics"
	"strings"
	"syscall"
	"time"

	"github.com/wsproxy/wsproxy"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9201", "address to listen on")
	target := flag.String("target", "ws://127.0.0.1:9200", "backend URL")
	pprofAddr := flag.String("pprof", "", "serve net/http/pprof on this address (empty: off)")
	certFile := flag.String("tls-cert", "", "serve TLS with this certificate (PEM); needs -tls-key")
	keyFile := flag.String("tls-key", "", "the certificate's private key (PEM)")
	memRate := flag.Int("memprofilerate", 0, "set runtime.MemProfileRate (0: Go's default); 1 records every allocation, for exact heap profiles")
	flag.Parse()
	if *memRate > 0 {
		runtime.MemProfileRate = *memRate
	}

	p, err := wsproxy.New([]string{*target},
		wsproxy.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if err != nil {
		log.Fatal(err)
	}
	if *pprofAddr != "" {
		http.HandleFunc("/debug/memclasses", memClasses)
		go func() { log.Println(http.ListenAndServe(*pprofAddr, http.DefaultServeMux)) }()
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() {
		if err := serve(srv, ln, *certFile, *keyFile); err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	p.Shutdown(sctx) // first: the server would wait for HTTP/2 tunnels
	srv.Shutdown(sctx)
}

// serve serves plain HTTP, or TLS when a certificate is given.
func serve(srv *http.Server, ln net.Listener, certFile, keyFile string) error {
	if certFile == "" && keyFile == "" {
		return srv.Serve(ln)
	}
	if certFile == "" || keyFile == "" {
		return errors.New("-tls-cert and -tls-key go together")
	}
	return srv.ServeTLS(ln, certFile, keyFile)
}

// memClasses writes every /memory/classes/ metric of runtime/metrics, one
// per line in bytes: where the process's memory is, finer than MemStats.
func memClasses(w http.ResponseWriter, _ *http.Request) {
	var samples []metrics.Sample
	for _, d := range metrics.All() {
		if strings.HasPrefix(d.Name, "/memory/classes/") && d.Kind == metrics.KindUint64 {
			samples = append(samples, metrics.Sample{Name: d.Name})
		}
	}
	metrics.Read(samples)
	for _, s := range samples {
		fmt.Fprintf(w, "%s %d\n", s.Name, s.Value.Uint64())
	}
}
