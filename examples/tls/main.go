// Command tls is the front door of a site in Go, as the nginx guides set it
// up: HTTPS (TLS 1.2 and up, HSTS) with wsproxy behind it, and plain HTTP on
// a second port answering 308 to the HTTPS URL.
//
//	go run .                                   # self-signed certificate for localhost
//	go run . -acme-domain chat.example.com -acme-email ops@example.com \
//	    -listen :443 -http :80                 # Let's Encrypt certificates (autocert)
//	go run . -cert server.pem -key server-key.pem \
//	    -backend wss://backend.internal:9443 -backend-ca internal-ca.pem
//
// The backend may be ws:// or wss://; a wss:// backend's certificate is
// checked against -backend-ca (system roots without it). Without -backend
// a built-in echo backend is started.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/examples/internal/echo"
)

// options are the command's flags.
type options struct {
	listen     string // HTTPS
	httpListen string // HTTP: redirects, and ACME HTTP-01 challenges
	certFile   string
	keyFile    string
	hsts       time.Duration

	acmeDomains   []string
	acmeEmail     string
	acmeCache     string
	acmeDirectory string

	backend   string
	backendCA string
}

var errUsage = errors.New("usage")

// parseOptions reads and checks the flags.
func parseOptions(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("tls", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8443", "HTTPS address")
	fs.StringVar(&o.httpListen, "http", "127.0.0.1:8080", "HTTP address: 308 to HTTPS, and ACME HTTP-01 challenges (port 80 for Let's Encrypt)")
	fs.StringVar(&o.certFile, "cert", "", "server certificate (PEM)")
	fs.StringVar(&o.keyFile, "key", "", "server key (PEM)")
	fs.DurationVar(&o.hsts, "hsts", 2*365*24*time.Hour, "Strict-Transport-Security max-age; 0 sends none")
	domains := fs.String("acme-domain", "", "get certificates from an ACME CA (Let's Encrypt) for these comma-separated names")
	fs.StringVar(&o.acmeEmail, "acme-email", "", "contact address for the ACME account (optional)")
	fs.StringVar(&o.acmeCache, "acme-cache", "acme-cache", "directory where certificates and the account key are kept")
	fs.StringVar(&o.acmeDirectory, "acme-directory", "", "ACME directory URL (default: Let's Encrypt production)")
	fs.StringVar(&o.backend, "backend", "", "ws:// or wss:// backend (default: a built-in echo backend)")
	fs.StringVar(&o.backendCA, "backend-ca", "", "CA certificate (PEM) for a wss:// backend; system roots if empty")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	if *domains != "" {
		o.acmeDomains = strings.Split(*domains, ",")
	}
	return o, o.check()
}

func (o options) check() error {
	var errs []error
	if (o.certFile == "") != (o.keyFile == "") {
		errs = append(errs, fmt.Errorf("%w: -cert and -key go together", errUsage))
	}
	if len(o.acmeDomains) > 0 && o.certFile != "" {
		errs = append(errs, fmt.Errorf("%w: -acme-domain and -cert exclude each other", errUsage))
	}
	if o.acmeCache == "" && len(o.acmeDomains) > 0 {
		errs = append(errs, fmt.Errorf("%w: -acme-cache is needed: without it every restart asks the CA again, and hits its rate limits", errUsage))
	}
	for _, d := range o.acmeDomains {
		// HTTP-01 proves control of one name: no IP addresses, no wildcards.
		if d == "" || strings.ContainsAny(d, "*/: ") || net.ParseIP(d) != nil || !strings.Contains(d, ".") {
			errs = append(errs, fmt.Errorf("%w: -acme-domain %q is not a host name a certificate can be issued for", errUsage, d))
		}
	}
	if o.hsts < 0 {
		errs = append(errs, fmt.Errorf("%w: -hsts must not be negative", errUsage))
	}
	return errors.Join(errs...)
}

func main() {
	o, err := parseOptions(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	target, stopBackend, err := echo.OrBuiltIn(o.backend, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer stopBackend()
	p, err := newProxy(target, o.backendCA)
	if err != nil {
		log.Fatal(err)
	}
	https, plain, err := frontDoor(o, p)
	if err != nil {
		log.Fatal(err)
	}
	httpsLn, err := net.Listen("tcp", o.listen)
	if err != nil {
		log.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", o.httpListen)
	if err != nil {
		log.Fatal(err)
	}
	go serve(func() error { return https.ServeTLS(httpsLn, "", "") })
	go serve(func() error { return plain.Serve(httpLn) })
	log.Printf("listening on https://%s (http://%s redirects to it)", httpsLn.Addr(), httpLn.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p.Shutdown(ctx) // first: tunnels get 1001
	https.Shutdown(ctx)
	plain.Shutdown(ctx)
}

func serve(run func() error) {
	if err := run(); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

// newProxy returns the proxy for target, checking a wss:// target's
// certificate against the CA in caFile (system roots when empty).
func newProxy(target, caFile string) (*wsproxy.Proxy, error) {
	backendTLS := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		backendTLS.RootCAs = x509.NewCertPool()
		if !backendTLS.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no certificate found", caFile)
		}
	}
	// ServerName is left empty: wsproxy sets it from each target's host, so
	// the backend's certificate is verified for the name in the URL (SNI).
	return wsproxy.New([]string{target}, wsproxy.WithTLSConfig(backendTLS))
}

// frontDoor returns the HTTPS server, with HSTS, in front of h, and the
// plain HTTP server that redirects to it (and answers ACME HTTP-01
// challenges in ACME mode).
func frontDoor(o options, h http.Handler) (https, plain *http.Server, err error) {
	redirect := redirectToHTTPS(o.listen)
	tlsConfig := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// HTTP/1.1 only: browsers then open WebSockets with the classic
		// upgrade. See the README's "HTTP/2 WebSockets" to add h2.
		NextProtos: []string{"http/1.1"},
	}
	switch {
	case len(o.acmeDomains) > 0:
		m := acmeManager(o)
		tlsConfig.GetCertificate = m.GetCertificate
		tlsConfig.NextProtos = append(tlsConfig.NextProtos, acme.ALPNProto) // TLS-ALPN-01 challenges
		redirect = m.HTTPHandler(redirect)                                  // HTTP-01 challenges
	case o.certFile != "":
		cert, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
		if err != nil {
			return nil, nil, err
		}
		tlsConfig.Certificates = []tls.Certificate{cert}
	default:
		cert, err := selfSigned()
		if err != nil {
			return nil, nil, err
		}
		log.Print("no -cert or -acme-domain given: using a self-signed certificate for localhost")
		tlsConfig.Certificates = []tls.Certificate{cert}
	}
	https = &http.Server{
		Handler:           withHSTS(o.hsts, h),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         tlsConfig,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	plain = &http.Server{Handler: redirect, ReadHeaderTimeout: 10 * time.Second}
	return https, plain, nil
}

// acmeManager gets and renews certificates for o.acmeDomains, and only for
// them, keeping them in o.acmeCache. Running with -acme-domain accepts the
// CA's terms of service.
func acmeManager(o options) *autocert.Manager {
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		HostPolicy: autocert.HostWhitelist(o.acmeDomains...),
		Cache:      autocert.DirCache(o.acmeCache),
		Email:      o.acmeEmail,
	}
	if o.acmeDirectory != "" {
		m.Client = &acme.Client{DirectoryURL: o.acmeDirectory}
	}
	return m
}

// redirectToHTTPS answers 308 (method and body kept, unlike 301) with the
// same host, path and query on the HTTPS port of httpsAddr.
func redirectToHTTPS(httpsAddr string) http.Handler {
	_, port, _ := net.SplitHostPort(httpsAddr)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if port != "" && port != "443" {
			host = net.JoinHostPort(host, port)
		} else if strings.Contains(host, ":") {
			host = "[" + host + "]" // an IPv6 literal
		}
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
}

// withHSTS tells browsers to use HTTPS only for maxAge (RFC 6797). They
// ignore it over a connection with certificate errors, so the self-signed
// default does not pin localhost.
func withHSTS(maxAge time.Duration, h http.Handler) http.Handler {
	if maxAge == 0 {
		return h
	}
	value := fmt.Sprintf("max-age=%d", int64(maxAge.Seconds()))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Strict-Transport-Security", value)
		h.ServeHTTP(w, r)
	})
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
