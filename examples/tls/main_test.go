package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/acme"
	"golang.org/x/net/websocket"

	"github.com/wsproxy/wsproxy/examples/internal/echo"
)

func TestParseOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give []string
		want error
	}{
		{"defaults", nil, nil},
		{"acme", []string{"-acme-domain", "chat.example.com,www.example.com", "-listen", ":443", "-http", ":80"}, nil},
		{"cert without key", []string{"-cert", "c.pem"}, errUsage},
		{"acme and cert", []string{"-acme-domain", "example.com", "-cert", "c.pem", "-key", "k.pem"}, errUsage},
		{"acme for an IP", []string{"-acme-domain", "192.0.2.1"}, errUsage},
		{"acme wildcard", []string{"-acme-domain", "*.example.com"}, errUsage},
		{"acme empty name", []string{"-acme-domain", "example.com,"}, errUsage},
		{"acme without cache", []string{"-acme-domain", "example.com", "-acme-cache", ""}, errUsage},
		{"negative hsts", []string{"-hsts", "-1s"}, errUsage},
		{"stray argument", []string{"extra"}, errUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseOptions(tt.give)
			if tt.want == nil {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, tt.want)
			}
		})
	}
}

// door runs the front door for o on loopback and returns the HTTPS and
// HTTP addresses.
func door(t *testing.T, o options) (httpsAddr, httpAddr string, tlsConfig *tls.Config) {
	t.Helper()
	backend, stop, err := echo.OrBuiltIn("", nil)
	require.NoError(t, err)
	t.Cleanup(stop)
	p, err := newProxy(backend, "")
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })

	httpsLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	o.listen = httpsLn.Addr().String()
	https, plain, err := frontDoor(o, p)
	require.NoError(t, err)
	go https.ServeTLS(httpsLn, "", "")
	go plain.Serve(httpLn)
	t.Cleanup(func() {
		https.Close()
		plain.Close()
	})
	return o.listen, httpLn.Addr().String(), https.TLSConfig
}

var noRedirects = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Timeout:       10 * time.Second,
}

func TestFrontDoor(t *testing.T) {
	t.Parallel()
	o, err := parseOptions(nil)
	require.NoError(t, err)
	httpsAddr, httpAddr, _ := door(t, o)

	resp, err := noRedirects.Get("http://" + httpAddr + "/chat?room=1")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusPermanentRedirect, resp.StatusCode)
	assert.Equal(t, "https://"+httpsAddr+"/chat?room=1", resp.Header.Get("Location"))

	insecure := &tls.Config{InsecureSkipVerify: true} // the self-signed default
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: insecure}, Timeout: 10 * time.Second}
	resp, err = client.Get("https://" + httpsAddr + "/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, "max-age=63072000", resp.Header.Get("Strict-Transport-Security"))
	assert.Equal(t, http.StatusUpgradeRequired, resp.StatusCode, "the proxy answers a request that is not a WebSocket")

	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		_, err := tls.Dial("tcp", httpsAddr, &tls.Config{InsecureSkipVerify: true, MinVersion: v, MaxVersion: v})
		assert.Error(t, err, "TLS version %x refused", v)
	}
	c, err := tls.Dial("tcp", httpsAddr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12})
	require.NoError(t, err)
	c.Close()

	cfg, err := websocket.NewConfig("wss://"+httpsAddr+"/ws", "https://"+httpsAddr)
	require.NoError(t, err)
	cfg.TlsConfig = insecure
	ws, err := websocket.DialConfig(cfg)
	require.NoError(t, err)
	defer ws.Close()
	require.NoError(t, websocket.Message.Send(ws, "over wss"))
	var msg string
	require.NoError(t, websocket.Message.Receive(ws, &msg))
	assert.Equal(t, "over wss", msg)
}

// TestFrontDoorACME checks what the ACME mode wires without a CA: the
// manager answers HTTP-01 challenges on the HTTP port for the allowed names
// only, and serves the certificate it has in its cache on the HTTPS port.
// The CA is a loopback server that must never be asked.
func TestFrontDoorACME(t *testing.T) {
	t.Parallel()
	var asked atomic.Int32
	ca := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		http.Error(w, "no CA here", http.StatusInternalServerError)
	}))
	defer ca.Close()
	cache := t.TempDir()
	o, err := parseOptions([]string{"-acme-domain", "chat.example.com", "-acme-cache", cache, "-acme-directory", ca.URL})
	require.NoError(t, err)
	cert := cachedCert(t, cache, "chat.example.com")
	require.NoError(t, os.WriteFile(filepath.Join(cache, "tok123+http-01"), []byte("tok123.thumbprint"), 0o600))
	httpsAddr, httpAddr, tlsConfig := door(t, o)

	assert.Equal(t, uint16(tls.VersionTLS12), tlsConfig.MinVersion)
	assert.Contains(t, tlsConfig.NextProtos, acme.ALPNProto, "TLS-ALPN-01 challenges")

	get := func(host, path string) (*http.Response, string) {
		req, err := http.NewRequest(http.MethodGet, "http://"+httpAddr+path, nil)
		require.NoError(t, err)
		req.Host = host
		resp, err := noRedirects.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, string(body)
	}
	resp, body := get("chat.example.com", "/.well-known/acme-challenge/tok123")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "tok123.thumbprint", body)
	resp, _ = get("evil.example.net", "/.well-known/acme-challenge/tok123")
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, "the host policy allows the -acme-domain names only")
	resp, _ = get("chat.example.com", "/page")
	assert.Equal(t, http.StatusPermanentRedirect, resp.StatusCode)
	_, port, _ := net.SplitHostPort(httpsAddr)
	assert.Equal(t, "https://chat.example.com:"+port+"/page", resp.Header.Get("Location"))

	roots := x509.NewCertPool()
	roots.AddCert(cert)
	c, err := tls.Dial("tcp", httpsAddr, &tls.Config{ServerName: "chat.example.com", RootCAs: roots})
	require.NoError(t, err)
	assert.True(t, cert.Equal(c.ConnectionState().PeerCertificates[0]), "the manager served its cached certificate")
	c.Close()
	_, err = tls.Dial("tcp", httpsAddr, &tls.Config{ServerName: "evil.example.net", InsecureSkipVerify: true})
	assert.Error(t, err, "no certificate for a name outside the host policy")
	assert.Zero(t, asked.Load(), "the CA was never asked")
}

// cachedCert writes a certificate for domain into an autocert cache
// directory, as the manager stores one it got from the CA: key, then chain.
// It is valid for a year, so the manager does not try to renew it.
func cachedCert(t *testing.T, dir, domain string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: domain},
		DNSNames:     []string{domain},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	var b strings.Builder
	require.NoError(t, pem.Encode(&b, &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	require.NoError(t, pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: der}))
	require.NoError(t, os.WriteFile(filepath.Join(dir, domain), []byte(b.String()), 0o600))
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert
}
