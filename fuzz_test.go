package wsproxy

// Fuzz targets for the parsers of untrusted bytes in the proxy: the
// client's upgrade request, the backend's response, origin patterns and
// Connection tokens (the frame stream a pump follows is fuzzed in
// internal/wsframe, FuzzTracker). Each checks an invariant against a simple
// oracle written here; scripts/fuzz.sh runs them all for a short time.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/wsproxy/wsproxy/internal/wstest"
)

// fakeConn is a net.Conn that records what is written to it.
type fakeConn struct {
	net.Conn // nil: only the methods below may be called
	out      bytes.Buffer
}

func (c *fakeConn) Write(b []byte) (int, error)      { return c.out.Write(b) }
func (c *fakeConn) Close() error                     { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) RemoteAddr() net.Addr             { return nil }

// fuzzPeer is the client address in FuzzClientRequest; fuzzTrustedPeer is
// one the proxy is told to trust.
const (
	fuzzPeer        = "192.0.2.7:40000"
	fuzzTrustedPeer = "10.1.2.3:40000"
)

// FuzzClientRequest parses raw request bytes as net/http does, and for
// every request checkClientRequest lets through builds the backend request
// and checks what the backend would see: none of the hop-by-hop headers of
// RFC 9110 §7.6.1 and none the client named in Connection, except the
// proxy's own Upgrade and Connection; the client's Sec-WebSocket-Key;
// forwarding headers that are the proxy's unless the peer is trusted; and
// bytes that parse back as one request with exactly one Host line. A rewrite
// hook copies a client-chosen header ("?h=Name:value") into the request, as
// careless user code might.
func FuzzClientRequest(f *testing.F) {
	req := func(target string, extra ...string) []byte {
		b := []byte(strings.Replace(string(wstest.Request("example.com", "/", "dGhlIHNhbXBsZSBub25jZQ==", extra...)), "GET / ", "GET "+target+" ", 1))
		return b
	}
	f.Add(req("/chat"), false)                                                                                                                                                                              // a plain upgrade
	f.Add(req("/chat?room=1", "Sec-WebSocket-Protocol: chat, superchat"), false)                                                                                                                            // query and subprotocols
	f.Add(req("/", "Connection: Upgrade, X-Forwarded-For, Cookie", "Cookie: a=1"), false)                                                                                                                   // names a proxy header and an end-to-end one in Connection
	f.Add(req("/", "X-Forwarded-For: 1.2.3.4", "Forwarded: for=1.2.3.4", "X-Real-IP: 1.2.3.4"), false)                                                                                                      // forged forwarding headers
	f.Add(req("/", "X-Forwarded-For: 1.2.3.4", "X-Forwarded-Host: a", "X-Forwarded-Proto: https"), true)                                                                                                    // from a trusted proxy
	f.Add(req("/", "Keep-Alive: 5", "TE: trailers", "Proxy-Authorization: x", "HTTP2-Settings: AAAA"), false)                                                                                               // hop-by-hop headers
	f.Add(req("/", "Sec-WebSocket-Accept: forged", "Sec-WebSocket-Version: 13"), false)                                                                                                                     // a second version, an accept from the client
	f.Add(req("/?h=Host:evil.example"), false)                                                                                                                                                              // rewrite sets a Host header
	f.Add(req("/?h=X-Evil:a%0d%0aX-Injected:%201"), false)                                                                                                                                                  // rewrite value with CRLF
	f.Add(req("/?h=Transfer-Encoding:chunked"), false)                                                                                                                                                      // rewrite sets a hop-by-hop header
	f.Add(req("http://other.example/abs"), false)                                                                                                                                                           // absolute-form target
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"), false) // an explicit empty body

	f.Fuzz(func(t *testing.T, raw []byte, trusted bool) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		// What the server does before any handler runs.
		if hosts := r.Header["Host"]; len(hosts) > 1 {
			return
		}
		delete(r.Header, "Host")
		r.RemoteAddr = fuzzPeer
		if trusted {
			r.RemoteAddr = fuzzTrustedPeer
		}
		if classify(r) != websocketUpgrade || checkClientRequest(r) != nil {
			return
		}
		var rewritten string // the header the hook set
		p, err := New([]string{"ws://backend.test:9000/base"},
			WithTrustedProxies("10.0.0.0/8"),
			WithRewrite(func(pr *ProxyRequest) {
				name, value, ok := strings.Cut(pr.In.URL.Query().Get("h"), ":")
				if ok && name != "" {
					// Assigned as given, not canonicalized: hooks do that.
					rewritten = http.CanonicalHeaderKey(name)
					pr.Out.Header[name] = []string{value}
				}
			}))
		if err != nil {
			t.Fatal(err)
		}
		br, err := p.newBackendRequest(r, p.set.Load().all[0])
		if err != nil {
			if !errors.Is(err, ErrRewrite) {
				t.Fatalf("newBackendRequest: %v", err)
			}
			return
		}
		h := br.header
		named := connectionTokens(r.Header)
		for k := range h {
			k = http.CanonicalHeaderKey(k)
			switch {
			case k == "Upgrade", k == "Connection", k == "Sec-Websocket-Key", k == "Sec-Websocket-Version", strings.HasPrefix(k, "X-Forwarded-"):
			case isHopByHop(k):
				t.Fatalf("hop-by-hop header %s reaches the backend", k)
			case named[k] && k != rewritten:
				t.Fatalf("header %s, named in the client's Connection, reaches the backend", k)
			}
		}
		for k, want := range map[string][]string{
			"Upgrade":               {"websocket"},
			"Connection":            {"Upgrade"},
			"Sec-Websocket-Key":     r.Header["Sec-Websocket-Key"],
			"Sec-Websocket-Version": {"13"},
		} {
			if !slicesEqual(h[k], want) {
				t.Fatalf("%s is %q, want %q", k, h[k], want)
			}
		}
		if !trusted && rewritten != "X-Forwarded-For" && rewritten != "X-Forwarded-Host" && rewritten != "X-Forwarded-Proto" {
			for k, want := range map[string][]string{
				"X-Forwarded-For":   {"192.0.2.7"},
				"X-Forwarded-Host":  {r.Host},
				"X-Forwarded-Proto": {"http"},
			} {
				if !slicesEqual(h[k], want) {
					t.Fatalf("%s is %q from an untrusted client, want %q", k, h[k], want)
				}
			}
			for _, k := range []string{"Forwarded", "X-Real-Ip"} {
				if _, ok := h[k]; ok && rewritten != k {
					t.Fatalf("%s from an untrusted client reaches the backend", k)
				}
			}
		}
		if trusted && rewritten != "X-Forwarded-For" {
			if xff := h["X-Forwarded-For"]; len(xff) != 1 || !strings.HasSuffix(xff[0], "10.1.2.3") {
				t.Fatalf("X-Forwarded-For is %q, want the trusted peer appended", xff)
			}
		}

		var wire bytes.Buffer
		w := bufio.NewWriter(&wire)
		if err := br.writeTo(w); err != nil {
			t.Fatal(err)
		}
		back, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(wire.Bytes())))
		if err != nil {
			t.Fatalf("the backend cannot parse\n%s\n%v", wire.Bytes(), err)
		}
		hosts := 0
		for _, line := range strings.Split(wire.String(), "\r\n") {
			if name, _, ok := strings.Cut(line, ":"); ok && strings.EqualFold(strings.TrimSpace(name), "host") {
				hosts++
			}
		}
		if hosts != 1 || back.Host != br.host {
			t.Fatalf("the backend sees %d Host lines, Host %q; want one, %q\n%s", hosts, back.Host, br.host, wire.Bytes())
		}
		if back.Method != http.MethodGet || back.RequestURI != br.uri || back.ContentLength != 0 || len(back.TransferEncoding) > 0 {
			t.Fatalf("the backend sees %s %s with a body of %d %v", back.Method, back.RequestURI, back.ContentLength, back.TransferEncoding)
		}
		if !slicesEqual(back.Header["Sec-Websocket-Key"], r.Header["Sec-Websocket-Key"]) {
			t.Fatalf("the backend sees key %q, the client sent %q", back.Header["Sec-Websocket-Key"], r.Header["Sec-Websocket-Key"])
		}
	})
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// scriptConn is a backend connection that swallows the request and answers
// with fixed bytes.
type scriptConn struct {
	fakeConn
	r io.Reader
}

func (c *scriptConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// fuzzKey is the key the proxy sends in FuzzBackendResponse.
const fuzzKey = "dGhlIHNhbXBsZSBub25jZQ=="

// FuzzBackendResponse feeds arbitrary backend answers to the real handshake
// reader and to checkUpgradeResponse. A response may only be accepted for
// a tunnel if it is, by an independent reading, a 101 with Upgrade:
// websocket, Connection: upgrade and the accept value for the key sent, with
// a subprotocol and extensions the client offered, and headers within the
// size limit.
func FuzzBackendResponse(f *testing.F) {
	accept := wstest.Accept(fuzzKey) // s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
	ok := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + "\r\n"
	f.Add([]byte(ok + "\r\n"))                                                                                                                           // valid
	f.Add([]byte(ok + "\r\n\x81\x02hi"))                                                                                                                 // valid, a frame right behind it
	f.Add([]byte(ok + "Sec-WebSocket-Protocol: chat\r\n\r\n"))                                                                                           // an offered subprotocol
	f.Add([]byte(ok + "Sec-WebSocket-Protocol: other\r\n\r\n"))                                                                                          // a subprotocol not offered
	f.Add([]byte(ok + "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"))                                               // an offered extension
	f.Add([]byte(ok + "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n\r\n"))                                                                       // an extension not offered
	f.Add([]byte(ok + "Sec-WebSocket-Accept: " + accept + "\r\n\r\n"))                                                                                   // the accept twice
	f.Add([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n"))                 // wrong accept
	f.Add([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + "\r\n\r\n"))             // another protocol
	f.Add([]byte("HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + "\r\n\r\n"))       // HTTP/1.0
	f.Add([]byte("HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + "\r\nContent-Length: 2\r\n\r\nok")) // 200 dressed as an upgrade
	f.Add([]byte("HTTP/1.1 100 Continue\r\n\r\n" + ok + "\r\n"))                                                                                         // an interim response first
	f.Add([]byte("HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\r\n"))                                                                  // refusal
	f.Add([]byte(ok + "X-Big: " + strings.Repeat("a", 2000) + "\r\n\r\n"))                                                                               // headers over the limit
	f.Add([]byte("HTTP/1.1 101\r\nupgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\nsec-websocket-accept: " + accept + "\r\n\r\n"))               // lower case, token lists

	const limit = 1024
	f.Fuzz(func(t *testing.T, raw []byte) {
		p := &Proxy{cfg: defaultConfig()}
		p.cfg.maxRespHeader = limit
		target := &Target{raw: "ws://backend.test"}
		req := &backendRequest{uri: "/", host: "example.com", header: http.Header{}, key: fuzzKey,
			protos: []string{"chat"}, exts: []string{"permessage-deflate"}}
		conn := &scriptConn{r: bytes.NewReader(raw)}
		resp, br, err := p.backendHandshake(context.Background(), conn, target, req)
		if err != nil {
			if !errors.Is(err, ErrBackendHandshake) {
				t.Fatalf("handshake error %v is not ErrBackendHandshake", err)
			}
			return
		}
		defer putReader(br)
		if err := checkUpgradeResponse(resp, req); err != nil {
			if !errors.Is(err, ErrInvalidUpgrade) {
				t.Fatalf("check error %v is not ErrInvalidUpgrade", err)
			}
			return
		}
		// Accepted: check it the slow way.
		if resp.StatusCode != 101 || resp.Proto != "HTTP/1.1" {
			t.Fatalf("accepted %s %d", resp.Proto, resp.StatusCode)
		}
		if end := bytes.Index(raw, []byte("\n\r\n")); end < 0 || end+3 > limit {
			if end2 := bytes.Index(raw, []byte("\n\n")); end2 < 0 || end2+2 > limit {
				t.Fatalf("accepted headers that end at %d or %d, over the %d-byte limit", end, end2, limit)
			}
		}
		hasToken := func(name, token string) bool {
			for _, v := range resp.Header[name] {
				for _, tok := range strings.Split(v, ",") {
					if strings.EqualFold(strings.Trim(tok, " \t"), token) {
						return true
					}
				}
			}
			return false
		}
		if !hasToken("Upgrade", "websocket") || !hasToken("Connection", "upgrade") {
			t.Fatalf("accepted Upgrade %q, Connection %q", resp.Header["Upgrade"], resp.Header["Connection"])
		}
		if got := resp.Header["Sec-Websocket-Accept"]; len(got) != 1 || got[0] != accept {
			t.Fatalf("accepted Sec-WebSocket-Accept %q", got)
		}
		if got := resp.Header["Sec-Websocket-Protocol"]; len(got) > 0 && !slicesEqual(got, []string{"chat"}) {
			t.Fatalf("accepted subprotocol %q", got)
		}
		for _, v := range resp.Header["Sec-Websocket-Extensions"] {
			for _, ext := range strings.Split(v, ",") {
				name, _, _ := strings.Cut(ext, ";")
				if name = strings.ToLower(strings.Trim(name, " \t")); name != "" && name != "permessage-deflate" {
					t.Fatalf("accepted extension %q", name)
				}
			}
		}
	})
}

// FuzzOriginPattern parses allowed-origin patterns and checks origins
// against them. A valid pattern must match its own host, a wildcard
// "*.d" must match "x.d" and never "d" itself or a name that merely ends
// in d without a dot boundary ("evild"); and checkOrigin may only let a
// cross-site origin through when, by url.Parse and a plain suffix test,
// its host is the pattern's.
func FuzzOriginPattern(f *testing.F) {
	f.Add("app.example.com", "https://app.example.com")        // exact host
	f.Add("*.example.com", "https://a.b.example.com")          // wildcard, two levels down
	f.Add("*.example.com", "https://example.com")              // the bare domain
	f.Add("*.example.com", "https://evilexample.com")          // no dot boundary
	f.Add("*.example.com", "https://a.example.com.evil.test")  // the domain in the middle
	f.Add("https://app.example.com", "http://app.example.com") // another scheme
	f.Add("localhost:3000", "http://localhost:3000")           // host and port
	f.Add("localhost:3000", "http://localhost:3001")           // another port
	f.Add("example.com:443", "https://EXAMPLE.com")            // default port, case
	f.Add("[::1]:8080", "http://[::1]:8080")                   // IPv6
	f.Add("null", "null")                                      // the opaque origin
	f.Add("*.*.example.com", "https://a.b.example.com")        // a second wildcard is refused
	f.Add("*.", "https://a.")                                  // nothing after the wildcard
	f.Add("example.com", "https://user@example.com")           // userinfo in the origin
	f.Add("example.com", "https://example.com/path")           // a path in the origin
	f.Add("example.com", "https://example.com%2f@evil.test")   // escapes

	const proxyHost = "proxy.test"
	f.Fuzz(func(t *testing.T, pattern, origin string) {
		pat, err := parseOriginPattern(pattern)
		if err != nil {
			return
		}
		if !pat.null {
			scheme := pat.scheme
			if scheme == "" {
				scheme = "https"
			}
			if !pat.wildcard && !pat.match(scheme, pat.host, pat.port) {
				t.Fatalf("%q does not match its own host %q", pattern, pat.host)
			}
			if pat.wildcard {
				if !pat.match(scheme, "x."+pat.host, pat.port) {
					t.Fatalf("%q does not match x.%s", pattern, pat.host)
				}
				for _, h := range []string{pat.host, "x" + pat.host, strings.TrimPrefix(pat.host, ".")} {
					if !strings.HasSuffix(h, "."+pat.host) && pat.match(scheme, h, pat.port) {
						t.Fatalf("%q matches %q", pattern, h)
					}
				}
			}
		}

		p := &Proxy{cfg: defaultConfig()}
		p.cfg.origins = []originPattern{pat}
		r := &http.Request{Host: proxyHost, Header: http.Header{"Origin": {origin}}}
		if p.checkOrigin(r) != nil {
			return
		}
		if pat.null {
			if origin != "null" {
				t.Fatalf("the null pattern let %q through", origin)
			}
			return
		}
		u, err := url.Parse(origin)
		if err != nil || u.User != nil || u.RawQuery != "" || u.Fragment != "" && false {
			t.Fatalf("accepted malformed origin %q", origin)
		}
		host := strings.ToLower(u.Hostname())
		if host == proxyHost {
			return // same host as the request
		}
		if !(host == pat.host || pat.wildcard && strings.HasSuffix(host, "."+pat.host) && len(host) > len(pat.host)+1) {
			t.Fatalf("pattern %q let origin %q (host %q) through", pattern, origin, host)
		}
	})
}

// connectionTokens returns the canonical header names listed in the
// Connection headers of h: the reference the fuzz targets check
// inConnection's verdicts against, written the plain way.
func connectionTokens(h http.Header) map[string]bool {
	v := h["Connection"]
	if len(v) == 0 {
		return nil
	}
	named := make(map[string]bool)
	for _, line := range v {
		for tok := range strings.SplitSeq(line, ",") {
			if tok = textproto.TrimString(tok); tok != "" {
				named[textproto.CanonicalMIMEHeaderKey(tok)] = true
			}
		}
	}
	return named
}

// FuzzInConnection: inConnection, which allocates nothing, agrees with the
// plain map of canonical names for every valid header name.
func FuzzInConnection(f *testing.F) {
	f.Add("Upgrade", "upgrade")
	f.Add("keep-alive, X-Secret ,upgrade", "X-Secret")
	f.Add(",,x-a,,", "X-A")
	f.Add("\u212aeep-Alive", "Keep-Alive") // the Kelvin sign names nothing
	f.Fuzz(func(t *testing.T, line, name string) {
		if !httpguts.ValidHeaderFieldName(name) {
			return
		}
		name = http.CanonicalHeaderKey(name)
		h := http.Header{"Connection": {line}}
		if got, want := inConnection(h["Connection"], name), connectionTokens(h)[name]; got != want {
			t.Fatalf("inConnection(%q, %q) = %v, want %v", line, name, got, want)
		}
	})
}
