package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The certificate must verify, with itself as the only root, for every
// name the load tool dials, and HAProxy's combined file must hold both
// the certificate and the key.
func TestWriteVerifies(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, write(dir))

	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	require.NoError(t, err)
	certPEM, err := os.ReadFile(filepath.Join(dir, "cert.pem"))
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(certPEM))
	for _, name := range []string{"127.0.0.1", "::1", "localhost"} {
		_, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots})
		assert.NoError(t, err, name)
	}
	_, err = leaf.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: roots})
	assert.Error(t, err, "valid only for loopback")

	combined, err := os.ReadFile(filepath.Join(dir, "cert+key.pem"))
	require.NoError(t, err)
	keyPEM, err := os.ReadFile(filepath.Join(dir, "key.pem"))
	require.NoError(t, err)
	assert.True(t, bytes.HasPrefix(combined, certPEM))
	assert.True(t, bytes.HasSuffix(combined, keyPEM))
	_, err = tls.X509KeyPair(combined, combined)
	assert.NoError(t, err)
}
