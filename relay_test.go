package wsproxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refusalBackend answers every upgrade with 403 and a body written in two
// parts: head, then, once release is closed, tail. With tail empty it
// closes the connection after head instead, cutting the body short.
func refusalBackend(t *testing.T, header, head, tail string, release <-chan struct{}) string {
	t.Helper()
	return rawBackend(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nX-Reason: no ticket\r\n"+header+"\r\n"+head)
		if tail == "" {
			return // the deferred Close cuts the body
		}
		<-release
		io.WriteString(c, tail)
	})
}

// relayCases are backends' refusals and what a client must see of them.
var relayCases = []struct {
	name          string
	header        string // framing header lines
	head, tail    string // the body as the backend writes it
	wantBody      string // the whole body, if it arrives complete
	wantLength    int64  // Content-Length the HTTP/1.1 client sees, -1 for none
	wantTruncated bool
}{
	{name: "chunked, streamed", header: "Transfer-Encoding: chunked\r\n", head: "5\r\nfirst\r\n", tail: "6\r\nsecond\r\n0\r\n\r\n",
		wantBody: "firstsecond", wantLength: -1},
	{name: "content-length, streamed", header: "Content-Length: 11\r\n", head: "first", tail: "second",
		wantBody: "firstsecond", wantLength: 11},
	{name: "chunked, cut short", header: "Transfer-Encoding: chunked\r\n", head: "5\r\nfirst\r\n",
		wantLength: -1, wantTruncated: true},
	{name: "content-length, cut short", header: "Content-Length: 100\r\n", head: "first",
		wantLength: 100, wantTruncated: true},
}

// checkRelayed reads a relayed refusal: the status, the header and the
// body's first part arrive while the backend still holds the rest, then the
// rest arrives, or the body ends in an error when the backend cut it short.
func checkRelayed(t *testing.T, resp *http.Response, release chan<- struct{}, wantBody string, wantTruncated bool) {
	t.Helper()
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
	assert.Equal(t, "no ticket", resp.Header.Get("X-Reason"))
	first := make([]byte, len("first"))
	_, err := io.ReadFull(resp.Body, first)
	require.NoError(t, err, "the first part arrives before the backend wrote the rest")
	assert.Equal(t, "first", string(first))
	close(release)
	rest, err := io.ReadAll(resp.Body)
	if wantTruncated {
		assert.Error(t, err, "a body the backend cut short must not look complete")
		return
	}
	assert.NoError(t, err)
	assert.Equal(t, wantBody, "first"+string(rest))
}

// TestRelayStreamsRefusal: a backend's non-101 answer reaches an HTTP/1.1
// client as it comes, with the backend's framing, and a body the backend
// cut short reaches it cut short.
func TestRelayStreamsRefusal(t *testing.T) {
	t.Parallel()
	for _, tt := range relayCases {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			_, url := newProxy(t, []string{refusalBackend(t, tt.header, tt.head, tt.tail, release)})
			resp, _, _ := rawRequest(t, url, upgradeRequest(url))
			assert.Equal(t, tt.wantLength, resp.ContentLength)
			checkRelayed(t, resp, release, tt.wantBody, tt.wantTruncated)
		})
	}
}

// TestH2RelayStreamsRefusal is TestRelayStreamsRefusal for RFC 8441
// streams: a cut body resets the stream, and the connection goes on.
func TestH2RelayStreamsRefusal(t *testing.T) {
	t.Parallel()
	for _, tt := range relayCases {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			f := newH2Fixture(t, []string{refusalBackend(t, tt.header, tt.head, tt.tail, release)})
			_, resp, err := f.dialH2(t, "/", nil)
			require.NoError(t, err)
			checkRelayed(t, resp, release, tt.wantBody, tt.wantTruncated)
			_, resp, err = f.dialH2(t, "/", nil)
			require.NoError(t, err, "the connection serves the next stream")
			assert.Equal(t, http.StatusForbidden, resp.StatusCode)
			assert.Equal(t, int32(1), f.conns.Load())
		})
	}
}
