// Command rproxy runs net/http/httputil.ReverseProxy, which proxies
// WebSocket upgrades since Go 1.12, as the standard library's row of the
// benchmark.
//
//	rproxy -listen 127.0.0.1:9202 -target http://127.0.0.1:9200 [-tls-cert cert.pem -tls-key key.pem]
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9202", "address to listen on")
	target := flag.String("target", "http://127.0.0.1:9200", "backend URL")
	certFile := flag.String("tls-cert", "", "serve TLS with this certificate (PEM); needs -tls-key")
	keyFile := flag.String("tls-key", "", "the certificate's private key (PEM)")
	flag.Parse()
	if (*certFile == "") != (*keyFile == "") {
		log.Fatal("-tls-cert and -tls-key go together")
	}

	u, err := url.Parse(*target)
	if err != nil {
		log.Fatal(err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite:  func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = r.In.Host },
		ErrorLog: log.New(io.Discard, "", 0),
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	if *certFile != "" {
		log.Fatal(srv.ServeTLS(ln, *certFile, *keyFile))
	}
	log.Fatal(srv.Serve(ln))
}
