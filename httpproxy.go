package wsproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// HTTP through the targets (WithHTTP). A request that is not a WebSocket
// upgrade goes through an httputil.ReverseProxy whose transport is the
// proxy's: for each try it picks a target with the same rules as an
// upgrade (pick), sends the request there over a keep-alive http.Transport
// and, when the connection failed, tries another one where that is safe.
// ReverseProxy does the rest: hop-by-hop headers, trailers, streaming with
// flushes for Server-Sent Events and chunked bodies, aborting the client's
// response when the backend's breaks.

// httpProxy is the proxy's HTTP side.
type httpProxy struct {
	p  *Proxy
	rp *httputil.ReverseProxy
	tr *http.Transport
}

func newHTTPProxy(p *Proxy) *httpProxy {
	hp := &httpProxy{p: p}
	var tlsConfig *tls.Config
	if p.cfg.tlsConfig != nil {
		tlsConfig = p.cfg.tlsConfig.Clone()
	}
	hp.tr = &http.Transport{
		DialContext:            hp.dial,
		TLSClientConfig:        tlsConfig,
		TLSHandshakeTimeout:    p.cfg.dialTimeout,
		ResponseHeaderTimeout:  p.cfg.respTimeout,
		MaxResponseHeaderBytes: int64(p.cfg.maxRespHeader),
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    64,
		IdleConnTimeout:        90 * time.Second,
		ExpectContinueTimeout:  time.Second,
		// The client's Accept-Encoding goes through as it is, and so does
		// the backend's encoding.
		DisableCompression: true,
	}
	hp.rp = &httputil.ReverseProxy{
		Rewrite:      hp.rewrite,
		Transport:    hp,
		ErrorHandler: hp.fail,
		ErrorLog:     slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
	}
	return hp
}

func (hp *httpProxy) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if d := hp.p.cfg.dialTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	return hp.p.dialFn(ctx, network, addr)
}

// RequestInfo describes an HTTP request proxied with WithHTTP.
type RequestInfo struct {
	Target     string // the target that answered, "" if none did
	RemoteAddr string // the client's address, as http.Request.RemoteAddr
	Method     string
	Path       string
	Proto      string
	// Status is the status the client got: the backend's, or the proxy's
	// own error status. 0 if the client left before an answer.
	Status   int
	Start    time.Time
	Duration time.Duration // until the response body was passed on, or broke
	Err      error         // why the proxy answered with an error, if it did
}

// httpRequest is one proxied request's state, carried in its context from
// serve through ReverseProxy to RoundTrip.
type httpRequest struct {
	in     *http.Request // the client's request
	aff    affinity
	target *Target
	status int
	err    error
}

type httpRequestKey struct{}

// serve proxies one request that is not a WebSocket upgrade.
func (hp *httpProxy) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		http.Error(w, "CONNECT is not proxied", http.StatusMethodNotAllowed)
		return
	}
	p := hp.p
	p.httpTotal.Add(1)
	st := &httpRequest{in: r}
	start := time.Now()
	defer hp.done(st, start) // also when ReverseProxy aborts the response
	hp.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), httpRequestKey{}, st)))
}

func (hp *httpProxy) done(st *httpRequest, start time.Time) {
	h := hp.p.cfg.hooks.OnRequest
	if h == nil {
		return
	}
	info := RequestInfo{
		RemoteAddr: st.in.RemoteAddr, Method: st.in.Method, Path: st.in.URL.Path, Proto: st.in.Proto,
		Status: st.status, Start: start, Duration: time.Since(start), Err: st.err,
	}
	if st.target != nil {
		info.Target = st.target.raw
	}
	h(info)
}

// rewrite applies the header rules of the package documentation to the
// request ReverseProxy made: it has already dropped the hop-by-hop headers
// (those named in Connection too) and every X-Forwarded-* and Forwarded.
// The target's part (URL, Host, WithRewrite) is RoundTrip's, once per try.
func (hp *httpProxy) rewrite(pr *httputil.ProxyRequest) {
	p := hp.p
	in, h := pr.In, pr.Out.Header
	trusted := p.trustedPeer(in)
	delete(h, "X-Real-Ip")
	if trusted {
		conn := in.Header["Connection"]
		for _, k := range forwardingHeaders {
			if v := in.Header[k]; len(v) > 0 && !inConnection(conn, k) {
				h[k] = slices.Clone(v)
			}
		}
	}
	p.setForwarded(h, in, trusted)
	if s := p.cfg.sticky; s != nil {
		stripCookie(h, s.cookie.Name)
	}
}

// RoundTrip sends the request to a target chosen for it, trying others
// (WithRetry) when the connection failed and a retry is safe: nothing was
// sent yet, or the request is idempotent and has no body. The target's slot
// is held until the response body is closed.
func (hp *httpProxy) RoundTrip(req *http.Request) (*http.Response, error) {
	st, _ := req.Context().Value(httpRequestKey{}).(*httpRequest)
	if st == nil {
		return nil, errors.New("wsproxy: HTTP request did not come through ServeHTTP")
	}
	p := hp.p
	lb := &p.cfg.lb
	var body *requestBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &requestBody{rc: req.Body}
	}
	start := time.Now()
	var (
		tried   []*Target
		lastErr error
	)
	for try := 1; ; try++ {
		t, err := p.pick(st.in, tried, &st.aff)
		if err != nil {
			if lastErr != nil {
				return nil, lastErr // every target left failed this request: say why the last did
			}
			return nil, err
		}
		t.stats.httpActive.Add(1)
		last := lb.lastTry(try, start)
		resp, sent, err := hp.try(req, st, t, body)
		if err == nil {
			t.health.succeeded()
			t.stats.httpRequests.Add(1)
			st.target, st.status = t, resp.StatusCode
			if p.placed(st.in, &st.aff, t) {
				resp.Header.Add("Set-Cookie", p.cfg.sticky.setCookie(t))
			}
			return resp, nil
		}
		t.stats.httpActive.Add(-1)
		t.open.Add(-1)
		if errors.Is(err, ErrRewrite) || req.Context().Err() != nil || p.ctx.Err() != nil {
			t.health.released() // not the backend's fault
			return nil, err
		}
		t.stats.httpFailures.Add(1)
		p.markFailed(t, err)
		if last || (sent && !idempotentWithoutBody(st.in)) || body.used() {
			return nil, err
		}
		lastErr = err
		tried = append(tried, t)
	}
}

// try sends the request to t once. sent reports whether the request's
// headers were written before it failed.
func (hp *httpProxy) try(req *http.Request, st *httpRequest, t *Target, body *requestBody) (*http.Response, bool, error) {
	p := hp.p
	ctx, cancel := context.WithCancel(req.Context())
	stopClose := context.AfterFunc(p.ctx, cancel)                  // Close aborts requests
	stopRetire := context.AfterFunc(t.retirementContext(), cancel) // and so does a drain timeout
	end := func() {
		stopClose()
		stopRetire()
		cancel()
	}

	out, err := hp.outRequest(ctx, req, st, t)
	if err != nil {
		end()
		return nil, false, err
	}
	if body != nil {
		out.Body = body
	}
	var sent atomic.Bool
	out = out.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteHeaders: func() { sent.Store(true) },
	}))
	resp, err := hp.tr.RoundTrip(out)
	if err != nil {
		end()
		op, sentinel := "dial", ErrDial
		if sent.Load() {
			op, sentinel = "request", ErrBackendRequest
		}
		return nil, sent.Load(), &BackendError{Target: t.raw, Op: op, Err: fmt.Errorf("%w: %w", sentinel, err)}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The request asked for no upgrade: this backend is not speaking
		// HTTP with us, and nothing is tunnelled.
		resp.Body.Close()
		end()
		return nil, true, &BackendError{Target: t.raw, Op: "request",
			Err: fmt.Errorf("%w: 101 to a request that asked for no upgrade", ErrBackendRequest)}
	}
	resp.Body = &responseBody{ReadCloser: resp.Body, done: func() {
		end()
		t.stats.httpActive.Add(-1)
		t.open.Add(-1)
	}}
	return resp, true, nil
}

// outRequest is the request for target t: its URL and path prefix, the
// client's Host (or the target's with WithTargetHost), then the rewrite
// hook, whose result is checked as an upgrade's is.
func (hp *httpProxy) outRequest(ctx context.Context, req *http.Request, st *httpRequest, t *Target) (*http.Request, error) {
	p := hp.p
	out := req.Clone(ctx)
	in := st.in
	path, rawPath, query := targetURI(t, in.URL)
	scheme := "http"
	if t.tls {
		scheme = "https"
	}
	out.URL = &url.URL{Scheme: scheme, Host: t.URL.Host, Path: path, RawPath: rawPath, RawQuery: query}
	out.Host = p.backendHost(in, t)
	if p.cfg.rewrite == nil {
		return out, nil
	}
	te := out.Header["Te"] // "trailers", which ReverseProxy keeps
	p.cfg.rewrite(&ProxyRequest{In: in, Out: out, Target: t})
	if out.Header == nil {
		out.Header = make(http.Header)
	}
	for k := range out.Header {
		if isHopByHop(k) {
			delete(out.Header, k) // a hook cannot make this an upgrade
		}
	}
	if te != nil {
		out.Header["Te"] = te
	}
	out.URL.Scheme, out.URL.Host = scheme, t.URL.Host
	if err := checkOutgoing(out.URL.RequestURI(), out.Host, out.Header); err != nil {
		return nil, err
	}
	return out, nil
}

// idempotentWithoutBody reports whether a request that reached a backend
// may be sent again to another (RFC 9110 §9.2.2).
func idempotentWithoutBody(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
	default:
		return false
	}
	return (r.Body == nil || r.Body == http.NoBody) && r.ContentLength == 0
}

// fail answers a request that got no response from any target. A client
// that left gets nothing.
func (hp *httpProxy) fail(w http.ResponseWriter, r *http.Request, err error) {
	p := hp.p
	st, _ := r.Context().Value(httpRequestKey{}).(*httpRequest)
	if st != nil {
		st.err = err
	}
	if r.Context().Err() != nil {
		return
	}
	p.httpFailures.Add(1)
	p.notifyReject(r, err)
	if st != nil {
		st.status = StatusCode(err)
	}
	p.writeError(w, r, err)
}

// requestBody is the client's request body as one try sees it. Closing it
// does not close the client's body, which the server owns, so that a
// request whose connection failed before a byte of it was read can be sent
// to another target.
type requestBody struct {
	rc   io.ReadCloser
	read atomic.Bool
}

func (b *requestBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.rc.Read(p)
}

func (b *requestBody) Close() error { return nil }

func (b *requestBody) used() bool { return b != nil && b.read.Load() }

// responseBody gives the target's slot back when ReverseProxy is done with
// the response.
type responseBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *responseBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

// retirement ends the HTTP requests in flight to a removed target when its
// drain timeout passes, as its tunnels are closed then.
type retirement struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func (t *Target) retirementContext() context.Context {
	for {
		if r := t.retired.Load(); r != nil {
			return r.ctx
		}
		ctx, cancel := context.WithCancel(context.Background())
		if t.retired.CompareAndSwap(nil, &retirement{ctx, cancel}) {
			return ctx
		}
		cancel()
	}
}

// retire ends t's HTTP requests in flight.
func (t *Target) retire() {
	if r := t.retired.Swap(nil); r != nil {
		r.cancel()
	}
}
