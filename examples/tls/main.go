// Command tls serves wsproxy over TLS (wss:// for clients) in front of a
// wss:// backend whose certificate is checked against a CA you give it.
//
//	go run ./examples/tls -cert server.pem -key server-key.pem \
//	    -backend wss://backend.internal:9443 -backend-ca internal-ca.pem
//
// Without -cert and -key it makes a self-signed certificate for localhost,
// which is enough to try it with a client that skips verification.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/wsproxy/wsproxy"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8443", "address to listen on")
	certFile := flag.String("cert", "", "server certificate (PEM)")
	keyFile := flag.String("key", "", "server key (PEM)")
	backend := flag.String("backend", "wss://127.0.0.1:9443", "wss:// backend")
	backendCA := flag.String("backend-ca", "", "CA certificate (PEM) for the backend; system roots if empty")
	flag.Parse()

	backendTLS := &tls.Config{MinVersion: tls.VersionTLS12}
	if *backendCA != "" {
		pem, err := os.ReadFile(*backendCA)
		if err != nil {
			log.Fatal(err)
		}
		backendTLS.RootCAs = x509.NewCertPool()
		if !backendTLS.RootCAs.AppendCertsFromPEM(pem) {
			log.Fatalf("%s: no certificate found", *backendCA)
		}
	}
	// ServerName is left empty: wsproxy sets it from each target's host, so
	// the backend's certificate is verified for the name in the URL (SNI).
	p, err := wsproxy.New([]string{*backend}, wsproxy.WithTLSConfig(backendTLS))
	if err != nil {
		log.Fatal(err)
	}

	var cert tls.Certificate
	if *certFile != "" {
		cert, err = tls.LoadX509KeyPair(*certFile, *keyFile)
	} else {
		cert, err = selfSigned()
		log.Print("no -cert given: using a self-signed certificate for localhost")
	}
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{
		Addr:              *listen,
		Handler:           p,
		ReadHeaderTimeout: 10 * time.Second,
		// HTTP/1.1 only: browsers then open WebSockets with the classic
		// upgrade. See the README's "HTTP/2 WebSockets" to add h2.
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	log.Printf("listening on wss://%s/", *listen)
	log.Fatal(srv.ListenAndServeTLS("", ""))
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
