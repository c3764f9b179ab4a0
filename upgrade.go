package wsproxy

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	engine "github.com/wsproxy/wsproxy/internal/tunnel"
)

// websocketGUID is appended to the key to compute Sec-WebSocket-Accept
// (RFC 6455 §1.3).
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// computeAccept returns the Sec-WebSocket-Accept value for a key.
func computeAccept(key string) string {
	h := sha1.New()
	h.Write([]byte(key))
	h.Write([]byte(websocketGUID))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// upgradeKind classifies a request by its Upgrade header.
type upgradeKind int

const (
	notUpgrade       upgradeKind = iota // no Upgrade header
	otherUpgrade                        // Upgrade to something else, h2c for example
	websocketUpgrade                    // Upgrade lists websocket
)

func classify(r *http.Request) upgradeKind {
	v := r.Header["Upgrade"]
	switch {
	case len(v) == 0:
		return notUpgrade
	case httpguts.HeaderValuesContainsToken(v, "websocket"):
		return websocketUpgrade
	}
	return otherUpgrade
}

// stripUpgrade removes every trace of an upgrade request other than
// websocket, so the fallback handler serves it as plain HTTP and can never
// pass an h2c (or other) upgrade on.
func stripUpgrade(r *http.Request) *http.Request {
	r2 := r.Clone(r.Context())
	r2.Header.Del("Upgrade")
	r2.Header.Del("Http2-Settings")
	var keep []string
	for _, v := range r2.Header["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			tok = textproto.TrimString(tok)
			if tok != "" && !strings.EqualFold(tok, "upgrade") && !strings.EqualFold(tok, "http2-settings") {
				keep = append(keep, tok)
			}
		}
	}
	if len(keep) == 0 {
		r2.Header.Del("Connection")
	} else {
		r2.Header["Connection"] = []string{strings.Join(keep, ", ")}
	}
	return r2
}

// checkClientRequest validates a WebSocket upgrade request as RFC 6455 §4.1
// and §4.2.1 describe it, before any backend is touched.
func checkClientRequest(r *http.Request) error {
	switch {
	case r.ProtoMajor != 1 || r.ProtoMinor < 1:
		return fmt.Errorf("%w: %s is not HTTP/1.1", ErrBadHandshake, r.Proto)
	case r.Method != http.MethodGet:
		return fmt.Errorf("%w: method %s is not GET", ErrBadHandshake, r.Method)
	case !httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade"):
		return fmt.Errorf("%w: Connection header does not contain upgrade", ErrBadHandshake)
	case r.ContentLength != 0 || len(r.TransferEncoding) > 0:
		return fmt.Errorf("%w: upgrade request has a body", ErrBadHandshake)
	}
	if err := checkKey(r.Header["Sec-Websocket-Key"]); err != nil {
		return err
	}
	if v := r.Header["Sec-Websocket-Version"]; len(v) != 1 || v[0] != "13" {
		return fmt.Errorf("%w: Sec-WebSocket-Version %q, want 13", ErrBadVersion, strings.Join(v, ", "))
	}
	return nil
}

func checkKey(v []string) error {
	if len(v) != 1 {
		return fmt.Errorf("%w: want one Sec-WebSocket-Key, got %d", ErrBadHandshake, len(v))
	}
	if b, err := base64.StdEncoding.DecodeString(v[0]); err != nil || len(b) != 16 {
		return fmt.Errorf("%w: Sec-WebSocket-Key is not 16 bytes in base64", ErrBadHandshake)
	}
	return nil
}

// ProxyRequest is what a rewrite hook (WithRewrite) sees and may change.
type ProxyRequest struct {
	// In is the client's request. Do not modify it.
	In *http.Request
	// Out is the request the proxy will send. Its URL.Path, URL.RawPath,
	// URL.RawQuery, Host and Header are used; everything else is ignored.
	Out *http.Request
	// Target is the backend chosen for this request.
	Target *Target
}

// hopByHop lists the hop-by-hop headers of RFC 9110 §7.6.1 and the legacy
// ones proxies also drop, in canonical form. Every header whose name
// starts with "Proxy-" is dropped as well.
var hopByHop = map[string]bool{
	"Connection":        true,
	"Keep-Alive":        true,
	"Te":                true,
	"Trailer":           true,
	"Transfer-Encoding": true,
	"Upgrade":           true,
	"Http2-Settings":    true,
}

func isHopByHop(name string) bool {
	return hopByHop[name] || strings.HasPrefix(name, "Proxy-")
}

// Headers the proxy owns on the way to the backend: a client can neither
// set them nor, by naming them in Connection, remove them.
var (
	forwardingHeaders = []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded", "X-Real-Ip"}
	handshakeHeaders  = []string{"Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Accept"}
)

// inConnection reports whether the Connection header values conn name the
// header name (canonical). Tokens compare as header names do, ignoring
// ASCII case; nothing is allocated, as this runs for every header of every
// upgrade.
func inConnection(conn []string, name string) bool {
	for _, line := range conn {
		for line != "" {
			var tok string
			tok, line, _ = strings.Cut(line, ",")
			if asciiEqualFold(textproto.TrimString(tok), name) {
				return true
			}
		}
	}
	return false
}

// asciiEqualFold is strings.EqualFold for ASCII only: a header token with
// a non-ASCII letter (the Kelvin sign folds to k) names no header.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// backendHeader builds the headers of the request to the backend. The order
// is the point: first everything hop-by-hop, named in Connection or owned by
// the proxy is left out, then the proxy adds its own, so nothing the client
// sends can remove or forge them.
func (p *Proxy) backendHeader(r *http.Request) http.Header {
	conn := r.Header["Connection"]
	trusted := p.trustedPeer(r)
	h := make(http.Header, len(r.Header)+6)
	// The values are copied, so that a rewrite hook cannot change the
	// client's request, into one array: each header gets a full slice of
	// it, so that an append makes a copy rather than overwrite a neighbour.
	n := 0
	for _, v := range r.Header {
		n += len(v)
	}
	vals := make([]string, 0, n)
	for k, v := range r.Header {
		switch {
		case isHopByHop(k), inConnection(conn, k):
			continue
		case k == "Origin" && p.cfg.stripOrigin:
			continue
		case slices.Contains(handshakeHeaders, k):
			continue
		case slices.Contains(forwardingHeaders, k) && !trusted:
			continue
		}
		i := len(vals)
		vals = append(vals, v...)
		h[k] = vals[i:len(vals):len(vals)]
	}
	p.setOwnHeaders(h, r.Header.Get("Sec-Websocket-Key"))
	p.setForwarded(h, r, trusted)
	if s := p.cfg.sticky; s != nil {
		stripCookie(h, s.cookie.Name)
	}
	return h
}

// setOwnHeaders sets the headers of the upgrade itself (RFC 6455 §4.1).
// A Host or Content-Length a rewrite hook put in the header map is dropped:
// the Host line comes from ProxyRequest.Out.Host alone, as net/http writes
// it, and an upgrade request has no body. Either would otherwise reach the
// backend as a second Host line or a body made of tunnel bytes. Names are
// compared in canonical form: a hook may assign to the map directly.
func (p *Proxy) setOwnHeaders(h http.Header, key string) {
	for k := range h {
		ck := textproto.CanonicalMIMEHeaderKey(k)
		if isHopByHop(ck) || slices.Contains(handshakeHeaders, ck) || ck == "Host" || ck == "Content-Length" {
			delete(h, k)
		}
	}
	v := []string{"websocket", "Upgrade", key, "13"} // one allocation, full slices of it
	h["Upgrade"] = v[0:1:1]
	h["Connection"] = v[1:2:2]
	h["Sec-Websocket-Key"] = v[2:3:3]
	h["Sec-Websocket-Version"] = v[3:4:4]
}

// setForwarded sets X-Forwarded-For, -Host and -Proto from what the proxy
// saw. -Proto is "http" or "https" (whether the client reached this server
// over TLS), the values web frameworks expect, not "ws"/"wss".
func (p *Proxy) setForwarded(h http.Header, r *http.Request, trusted bool) {
	vals := make([]string, 0, 3) // one allocation, full slices of it
	set := func(k, v string) {
		vals = append(vals, v)
		n := len(vals)
		h[k] = vals[n-1 : n : n]
	}
	ip := clientIP(r)
	if trusted {
		if prior := h["X-Forwarded-For"]; len(prior) > 0 && ip != "" {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		if len(h["X-Forwarded-Host"]) > 0 && len(h["X-Forwarded-Proto"]) > 0 {
			if ip != "" {
				set("X-Forwarded-For", ip)
			}
			return
		}
	}
	if ip != "" {
		set("X-Forwarded-For", ip)
	}
	set("X-Forwarded-Host", r.Host)
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	set("X-Forwarded-Proto", proto)
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return ""
	}
	return host
}

func (p *Proxy) trustedPeer(r *http.Request) bool {
	if len(p.cfg.trustedProxies) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && p.isTrusted(ap.Addr().Unmap())
}

// isTrusted reports whether a is listed by WithTrustedProxies.
func (p *Proxy) isTrusted(a netip.Addr) bool {
	for _, pfx := range p.cfg.trustedProxies {
		if pfx.Contains(a) {
			return true
		}
	}
	return false
}

// backendRequest is the upgrade request as it will be written.
type backendRequest struct {
	uri    string // request-target: path and query
	host   string
	header http.Header
	key    string   // Sec-WebSocket-Key sent
	protos []string // subprotocols the client offered
	exts   []string // extension names the client offered
}

// newBackendRequest builds the request for target t, runs the rewrite hook
// and validates the result.
func (p *Proxy) newBackendRequest(r *http.Request, t *Target) (*backendRequest, error) {
	path, rawPath, query := targetURI(t, r.URL)
	host := p.backendHost(r, t)
	key := r.Header.Get("Sec-Websocket-Key")
	header := p.backendHeader(r)

	if p.cfg.rewrite != nil {
		out := &http.Request{
			Method: http.MethodGet,
			URL:    &url.URL{Scheme: t.URL.Scheme, Host: t.URL.Host, Path: path, RawPath: rawPath, RawQuery: query},
			Proto:  "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Host:   host,
			Header: header,
		}
		p.cfg.rewrite(&ProxyRequest{In: r, Out: out, Target: t})
		if out.Header == nil {
			out.Header = make(http.Header)
		}
		header, host = out.Header, out.Host
		path, rawPath, query = out.URL.Path, out.URL.RawPath, out.URL.RawQuery
		p.setOwnHeaders(header, key)
	}

	u := url.URL{Path: path, RawPath: rawPath, RawQuery: query}
	br := &backendRequest{
		uri:    u.RequestURI(),
		host:   host,
		header: header,
		key:    key,
		protos: headerTokens(r.Header["Sec-Websocket-Protocol"]),
		exts:   extensionNames(r.Header["Sec-Websocket-Extensions"]),
	}
	if err := br.validate(); err != nil {
		return nil, err
	}
	return br, nil
}

// validate refuses anything that would let a value break out of its line:
// the rewrite hook is user code and its values may come from clients.
func (br *backendRequest) validate() error {
	return checkOutgoing(br.uri, br.host, br.header)
}

// checkOutgoing refuses a request target, Host or header, of an upgrade or
// an HTTP request (WithHTTP), that could break out of its line.
func checkOutgoing(uri, host string, header http.Header) error {
	for i := 0; i < len(uri); i++ {
		if c := uri[i]; c <= ' ' || c == 0x7f {
			return fmt.Errorf("%w: request target %q has a space or control byte", ErrRewrite, uri)
		}
	}
	if !httpguts.ValidHostHeader(host) {
		return fmt.Errorf("%w: Host %q", ErrRewrite, host)
	}
	for k, vv := range header {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("%w: header name %q", ErrRewrite, k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("%w: value of %s has invalid bytes", ErrRewrite, k)
			}
		}
	}
	return nil
}

// targetURI is where a request for u goes on target t: the target's path
// prefixed to the request's, the target's query before the request's.
func targetURI(t *Target, u *url.URL) (path, rawPath, query string) {
	path, rawPath = joinURLPath(t.URL, u)
	query = t.URL.RawQuery
	switch {
	case query == "":
		query = u.RawQuery
	case u.RawQuery != "":
		query += "&" + u.RawQuery
	}
	return path, rawPath, query
}

// backendHost is the Host a backend gets: the client's, or the target's
// with WithTargetHost.
func (p *Proxy) backendHost(r *http.Request, t *Target) string {
	if p.cfg.hostFromTarget {
		return t.URL.Host
	}
	return r.Host
}

// joinURLPath joins the target's path and the request's, as
// httputil.NewSingleHostReverseProxy does, keeping escaped forms intact.
func joinURLPath(a, b *url.URL) (path, rawpath string) {
	if a.RawPath == "" && b.RawPath == "" {
		return singleJoiningSlash(a.Path, b.Path), ""
	}
	apath, bpath := a.EscapedPath(), b.EscapedPath()
	aslash, bslash := strings.HasSuffix(apath, "/"), strings.HasPrefix(bpath, "/")
	switch {
	case aslash && bslash:
		return a.Path + b.Path[1:], apath + bpath[1:]
	case !aslash && !bslash:
		return a.Path + "/" + b.Path, apath + "/" + bpath
	}
	return a.Path + b.Path, apath + bpath
}

func singleJoiningSlash(a, b string) string {
	aslash, bslash := strings.HasSuffix(a, "/"), strings.HasPrefix(b, "/")
	switch {
	case aslash && bslash:
		return a + b[1:]
	case !aslash && !bslash:
		return a + "/" + b
	}
	return a + b
}

// headerTokens splits comma-separated header values into trimmed tokens.
func headerTokens(values []string) []string {
	var out []string
	for _, v := range values {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = textproto.TrimString(tok); tok != "" {
				out = append(out, tok)
			}
		}
	}
	return out
}

// extensionNames returns the extension names of Sec-WebSocket-Extensions
// values ("permessage-deflate; client_max_window_bits" gives
// "permessage-deflate"), lower-cased.
func extensionNames(values []string) []string {
	names := headerTokens(values)
	for i, e := range names {
		name, _, _ := strings.Cut(e, ";")
		names[i] = strings.ToLower(textproto.TrimString(name))
	}
	return names
}

// writeTo writes the request line and headers. Sec-WebSocket-* names keep
// their RFC spelling: some servers match them case-sensitively.
func (br *backendRequest) writeTo(w *bufio.Writer) error {
	w.WriteString("GET ")
	w.WriteString(br.uri)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(br.host)
	w.WriteString("\r\n")
	writeHeader(w, br.header)
	w.WriteString("\r\n")
	return w.Flush()
}

func writeHeader(w *bufio.Writer, h http.Header) {
	for k, vv := range h {
		for _, v := range vv {
			writeHeaderName(w, k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
}

func writeHeaderName(w *bufio.Writer, k string) {
	if rest, ok := strings.CutPrefix(k, "Sec-Websocket-"); ok {
		w.WriteString("Sec-WebSocket-")
		w.WriteString(rest)
		return
	}
	w.WriteString(k)
}

type bufioReader = bufio.Reader

var (
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 1024) }}
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
)

// limitReader fails reads once more than n bytes were read through it; the
// backend's response headers are read through it, then the limit is lifted.
type limitReader struct {
	r        io.Reader
	n        int
	exceeded bool
}

var errHeaderTooLarge = errors.New("response header too large")

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		l.exceeded = true
		return 0, errHeaderTooLarge
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= n
	return n, err
}

// defaultKeepAlive is the TCP keep-alive idle time of backend connections
// without WithDialer.
const defaultKeepAlive = 15 * time.Second

// dialsInLoop reports whether the backend of upgrade r to t is dialled
// into an event loop (engine.Dial) rather than with the dialer: the proxy
// uses its default dialer and event loops, the target is plain TCP at an
// IP address, and the client's connection is HTTP/1.1 without TLS, so that
// the tunnel will run in the loop too. Otherwise the tunnel's goroutines
// would read a connection made for the loop.
func (p *Proxy) dialsInLoop(r *http.Request, t *Target) bool {
	return p.loopDial && !t.tls && t.ip.IsValid() && r.TLS == nil && r.ProtoMajor == 1
}

// dial connects to the target, with TLS for wss and https targets, and
// into an event loop if inLoop (see dialsInLoop).
func (p *Proxy) dial(ctx context.Context, t *Target, inLoop bool) (net.Conn, error) {
	if p.cfg.dialTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.dialTimeout)
		defer cancel()
	}
	var conn net.Conn
	var err error
	if inLoop {
		conn, err = engine.Dial(ctx, t.ip, defaultKeepAlive)
	} else {
		conn, err = p.dialFn(ctx, "tcp", t.addr)
	}
	if err != nil {
		return nil, &BackendError{Target: t.raw, Op: "dial", Err: fmt.Errorf("%w: %w", ErrDial, err)}
	}
	if !t.tls {
		return conn, nil
	}
	cfg := &tls.Config{}
	if p.cfg.tlsConfig != nil {
		cfg = p.cfg.tlsConfig.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = t.URL.Hostname()
	}
	// The upgrade is an HTTP/1.1 request, whatever the backend prefers.
	cfg.NextProtos = []string{"http/1.1"}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, &BackendError{Target: t.raw, Op: "dial", Err: fmt.Errorf("%w: tls: %w", ErrDial, err)}
	}
	return tc, nil
}

// backendHandshake writes the upgrade request on conn and reads the
// response headers, within the handshake timeout. It returns the response
// and the reader holding any bytes the backend sent after it.
func (p *Proxy) backendHandshake(ctx context.Context, conn net.Conn, t *Target, req *backendRequest) (*http.Response, *bufio.Reader, error) {
	fail := func(err error) (*http.Response, *bufio.Reader, error) {
		return nil, nil, &BackendError{Target: t.raw, Op: "handshake", Err: fmt.Errorf("%w: %w", ErrBackendHandshake, err)}
	}
	if p.cfg.handshakeTimeout > 0 {
		conn.SetDeadline(time.Now().Add(p.cfg.handshakeTimeout))
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	w := writerPool.Get().(*bufio.Writer)
	w.Reset(conn)
	err := req.writeTo(w)
	w.Reset(nil)
	writerPool.Put(w)
	if err != nil {
		return fail(err)
	}

	lr := &limitReader{r: conn, n: p.cfg.maxRespHeader}
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(lr)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		putReader(br)
		if lr.exceeded {
			err = fmt.Errorf("response headers larger than %d bytes", p.cfg.maxRespHeader)
		} else if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fail(err)
	}
	lr.n = int(^uint(0) >> 1)
	return resp, br, nil
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readerPool.Put(br)
}

// checkUpgradeResponse accepts a 101 only if it is a real WebSocket
// upgrade for the key the proxy sent (RFC 6455 §4.1, the client's checks).
// Anything less and the connection could be a plain HTTP connection that an
// attacker makes the proxy treat as a tunnel.
func checkUpgradeResponse(resp *http.Response, req *backendRequest) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidUpgrade}, args...)...)
	}
	h := resp.Header
	switch {
	case resp.StatusCode != http.StatusSwitchingProtocols:
		return bad("status %d", resp.StatusCode)
	case resp.ProtoMajor != 1 || resp.ProtoMinor != 1:
		return bad("protocol %s", resp.Proto)
	case !httpguts.HeaderValuesContainsToken(h["Upgrade"], "websocket"):
		return bad("Upgrade is %q", strings.Join(h["Upgrade"], ", "))
	case !httpguts.HeaderValuesContainsToken(h["Connection"], "upgrade"):
		return bad("Connection is %q", strings.Join(h["Connection"], ", "))
	case len(h["Sec-Websocket-Accept"]) != 1 || h["Sec-Websocket-Accept"][0] != computeAccept(req.key):
		return bad("Sec-WebSocket-Accept does not match the key")
	}
	if v := h["Sec-Websocket-Protocol"]; len(v) > 0 {
		if len(v) != 1 || !slices.Contains(req.protos, v[0]) {
			return bad("subprotocol %q was not offered", strings.Join(v, ", "))
		}
	}
	for _, name := range extensionNames(h["Sec-Websocket-Extensions"]) {
		if !slices.Contains(req.exts, name) {
			return bad("extension %q was not offered", name)
		}
	}
	return nil
}

// canHijack reports whether w, or a ResponseWriter it unwraps to, can be
// hijacked; it follows the same chain http.ResponseController does, so a
// wrapping middleware without Unwrap is caught before a backend is dialled.
func canHijack(w http.ResponseWriter) bool {
	for {
		switch t := w.(type) {
		case http.Hijacker:
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return false
		}
	}
}

// relay sends a backend's non-101 answer to the client as an ordinary HTTP
// response, as it arrives: status and headers at once, then the body,
// flushed after every read, so a streaming answer is not held back. The
// backend's framing is kept: a Content-Length is passed on, and without one
// the body is chunked (HTTP/1.1) or ends with the stream (HTTP/2). Each
// read from the backend and each write to the client is bounded by the
// handshake timeout, not the whole body: it may stream for as long as it
// moves. relay returns the error that cut the body short, if one did; the
// caller then aborts the response.
//
// Over HTTP/1.1 it makes sure the client connection is closed afterwards:
// it never becomes a tunnel and never carries a second request. Over
// HTTP/2 only the stream ends (RFC 8441 §5), and the connection's other
// streams go on: "Connection: close" there would make Go's server send
// GOAWAY.
func (p *Proxy) relay(w http.ResponseWriter, r *http.Request, resp *http.Response, conn net.Conn) error {
	dst := w.Header()
	named := resp.Header["Connection"]
	for k, vv := range resp.Header {
		if !isHopByHop(k) && !inConnection(named, k) {
			dst[k] = append([]string(nil), vv...)
		}
	}
	if r.ProtoMajor == 1 {
		dst.Set("Connection", "close")
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	rc.Flush()
	buf := make([]byte, 8<<10)
	for {
		if d := p.cfg.handshakeTimeout; d > 0 {
			conn.SetReadDeadline(time.Now().Add(d))
			rc.SetWriteDeadline(time.Now().Add(d))
		}
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return nil // the client is gone: there is no one to tell
			}
			if err == nil {
				// The last part is not flushed: the server sends it as the
				// handler returns, so the client sees the end only once the
				// proxy has given back what the request held (its admission
				// place), and may try again at once.
				rc.Flush()
			}
		}
		switch {
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		}
	}
}

// abortResponse ends a response that cannot be completed, as
// httputil.ReverseProxy does: the server closes the HTTP/1.1 connection
// without the chunked terminator or the bytes Content-Length promised, or
// resets the HTTP/2 stream, so the client sees a broken response rather
// than a short one that looks whole. A middleware that recovers panics
// must let http.ErrAbortHandler through.
func abortResponse() {
	panic(http.ErrAbortHandler)
}

// answerHeader is what the client's success answer (101, or 200 over
// HTTP/2) carries besides the upgrade's own headers: what a middleware put
// in w.Header() before the proxy ran (pre) and the backend's end-to-end
// headers (subprotocol, extensions, cookies). Hop-by-hop and
// Connection-named headers stay behind, and so does everything Content-*:
// the answer has no content, and a compression middleware's
// Content-Encoding would tell the client the stream itself is compressed.
// Sec-WebSocket-Accept is the caller's to set (HTTP/2 has none).
func answerHeader(pre http.Header, resp *http.Response) http.Header {
	h := make(http.Header, len(pre)+len(resp.Header))
	keep := func(k string) bool {
		return !isHopByHop(k) && !strings.HasPrefix(k, "Content-") && k != "Sec-Websocket-Accept"
	}
	for k, vv := range pre {
		if keep(k) {
			h[k] = vv
		}
	}
	conn := resp.Header["Connection"]
	for k, vv := range resp.Header {
		if keep(k) && !inConnection(conn, k) {
			h[k] = vv
		}
	}
	return h
}

// The values of the 101's own headers, shared by every answer: h in
// write101 is only written out, never changed.
var (
	upgradeWebsocket  = []string{"websocket"}
	connectionUpgrade = []string{"Upgrade"}
)

// write101 answers the client. The response carries the backend's accept
// value, subprotocol and extensions, its other end-to-end headers (cookies,
// for example) and whatever a middleware put in w.Header() before the proxy
// ran.
func write101(conn net.Conn, pre http.Header, resp *http.Response, timeout time.Duration) error {
	h := answerHeader(pre, resp)
	h["Sec-Websocket-Accept"] = resp.Header["Sec-Websocket-Accept"] // checked against the client's key
	h["Upgrade"] = upgradeWebsocket
	h["Connection"] = connectionUpgrade
	for k, vv := range h {
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
				delete(h, k)
			}
		}
	}
	if timeout > 0 {
		conn.SetWriteDeadline(time.Now().Add(timeout))
		defer conn.SetWriteDeadline(time.Time{})
	}
	w := writerPool.Get().(*bufio.Writer)
	defer writerPool.Put(w)
	defer w.Reset(nil)
	w.Reset(conn)
	w.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	writeHeader(w, h)
	w.WriteString("\r\n")
	return w.Flush()
}
