package wsproxy

import (
	"iter"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	engine "github.com/wsproxy/wsproxy/internal/tunnel"
)

// A tunnel is one proxied WebSocket as the proxy sees it: the engine's
// tunnel (internal/tunnel), which moves the frames and decides when the
// tunnel ends, and beside it what only the proxy needs: the target, what
// TunnelInfo reports, and its place in the registry. The proxy tells the
// engine what to do through its methods (Close, Abort, Traffic) and never
// touches its locks; the engine tells the proxy once, in TunnelEnded. One
// tunnel is one allocation (see TestTunnelSize).
type tunnel struct {
	engine.Tunnel

	p      *Proxy
	target *Target

	// What info reports, kept field by field: an idle tunnel holds only
	// what it must (see "Memory of an idle tunnel" in docs/DESIGN.md); the
	// client's address is its connection's unless extra says otherwise.
	path        string
	subprotocol string
	opened      time.Duration // since clockBase: the monotonic clock, in 8 bytes rather than a time.Time's 24

	protoMajor, protoMinor uint8 // of the client's request
	holding                bool  // the tunnel holds places under the admission limits (extra.slotCS: its client's)
	index                  int32 // in the proxy's tunnelList, under the proxy's mu

	extra *tunnelExtra // nil unless needed
}

// A tunnelExtra holds what only some tunnels need: the client's address
// where a middleware changed it, the per-client admission entry to give
// back, and the channel the HTTP/2 handler waits on. It is set before the
// tunnel starts and read after it ended, so it needs no lock.
type tunnelExtra struct {
	remoteAddr    string        // the request's RemoteAddr, where it is not the client connection's
	hasRemoteAddr bool          // remoteAddr is set
	slotCS        *clientState  // with holding: the client's entry under per-client limits, if any
	done          chan struct{} // closed when the tunnel ended, if set (the HTTP/2 handler waits on it)
}

func (tn *tunnel) extraInfo() *tunnelExtra {
	if tn.extra == nil {
		tn.extra = new(tunnelExtra)
	}
	return tn.extra
}

// A tunnelList is the proxy's registry of open tunnels: a slice in which
// each tunnel knows its index, so that adding and removing one take
// constant time and cost a tunnel 4 bytes of its own and 8 in the slice,
// where two links through the tunnels cost 16 and moved every tunnel to
// the next size class (TestTunnelSize). The proxy's mu guards it.
type tunnelList struct{ open []*tunnel }

func (l *tunnelList) add(tn *tunnel) {
	tn.index = int32(len(l.open))
	l.open = append(l.open, tn)
}

// remove takes tn out; it must be in the list. The last tunnel takes its
// place, and a list down to a quarter of its capacity moves to a smaller
// array, so that a peak's table does not stay.
func (l *tunnelList) remove(tn *tunnel) {
	last := len(l.open) - 1
	moved := l.open[last]
	l.open[tn.index], moved.index = moved, tn.index
	l.open[last] = nil
	l.open = l.open[:last]
	if c := cap(l.open); c > 64 && last < c/4 {
		l.open = append(make([]*tunnel, 0, c/2), l.open...)
	}
}

func (l *tunnelList) len() int { return len(l.open) }

func (l *tunnelList) all() iter.Seq[*tunnel] { return slices.Values(l.open) }

// newTunnel makes the tunnel of a completed handshake; it starts with
// tn.Start once registered.
func newTunnel(p *Proxy, t *Target, client, back net.Conn, info TunnelInfo) *tunnel {
	// The path is copied out of the request line, which a long query (an
	// access token, say) would otherwise keep alive for the tunnel's life.
	tn := &tunnel{p: p, target: t, path: strings.Clone(info.Path), subprotocol: info.Subprotocol, opened: info.Start.Sub(clockBase)}
	tn.Init(&p.engine, tn, client, back)
	if !isAddr(client.RemoteAddr(), info.RemoteAddr) {
		x := tn.extraInfo()
		x.remoteAddr, x.hasRemoteAddr = info.RemoteAddr, true
	}
	tn.protoMajor, tn.protoMinor, _ = parseProto(info.Proto)
	return tn
}

// isAddr reports whether a's String is s; it spares a TCP address (every
// HTTP/1.1 client's) the formatting and the allocation.
func isAddr(a net.Addr, s string) bool {
	if ta, ok := a.(*net.TCPAddr); ok {
		// A v4 address may be in 16 bytes, and prints as 4.
		if ap, err := netip.ParseAddrPort(s); err == nil && !ap.Addr().Is4In6() && ta.Zone == ap.Addr().Zone() {
			got := ta.AddrPort()
			return got.Port() == ap.Port() && got.Addr().Unmap() == ap.Addr()
		}
	}
	return a != nil && a.String() == s
}

// info describes the tunnel to hooks and logs.
func (tn *tunnel) info() TunnelInfo {
	proto := "HTTP/1.1"
	if tn.protoMajor != 1 || tn.protoMinor != 1 {
		proto = "HTTP/" + strconv.Itoa(int(tn.protoMajor)) + "." + strconv.Itoa(int(tn.protoMinor))
	}
	var remoteAddr string
	if x := tn.extra; x != nil && x.hasRemoteAddr {
		remoteAddr = x.remoteAddr
	} else {
		remoteAddr = tn.Client().RemoteAddr().String()
	}
	return TunnelInfo{Target: tn.target.raw, RemoteAddr: remoteAddr, Path: tn.path, Proto: proto,
		Subprotocol: tn.subprotocol, Start: clockBase.Add(tn.opened)}
}

// clockBase is the origin of tunnel.opened. A time.Time from time.Now
// carries a monotonic reading, and so do clockBase.Add and Sub.
var clockBase = time.Now()

// parseProto parses "HTTP/x.y" with single digits, as net/http accepts it.
func parseProto(proto string) (major, minor uint8, ok bool) {
	if len(proto) != 8 || proto[:5] != "HTTP/" || proto[6] != '.' ||
		proto[5] < '0' || proto[5] > '9' || proto[7] < '0' || proto[7] > '9' {
		return 1, 1, false
	}
	return proto[5] - '0', proto[7] - '0', true
}

// holdSlot makes the tunnel the holder of the admission's places, stored
// as a flag and, for per-client limits, an entry in tunnelExtra, since most
// tunnels have none. Called before start.
func (tn *tunnel) holdSlot(a admission) {
	tn.holding = a.l != nil
	if a.cs != nil {
		tn.extraInfo().slotCS = a.cs
	}
}

// releaseSlot gives the tunnel's places back. Called once, when the tunnel
// ended.
func (tn *tunnel) releaseSlot() {
	if !tn.holding {
		return
	}
	a := admission{l: &tn.p.limits}
	if tn.extra != nil {
		a.cs = tn.extra.slotCS
	}
	a.release()
}

// TunnelEnded is the engine's word that the tunnel ended: settle the
// counts, tell the hooks and the log, leave the registry, and let the
// HTTP/2 handler return.
func (tn *tunnel) TunnelEnded(r engine.Result) {
	tn.p.tunnelClosed(tn, CloseInfo{
		TunnelInfo:      tn.info(),
		Duration:        time.Since(clockBase) - tn.opened,
		ClientToBackend: Traffic(r.Up),
		BackendToClient: Traffic(r.Down),
		Reason:          r.Reason,
		Detail:          r.Detail,
		Err:             r.Err,
	})
	if tn.extra != nil && tn.extra.done != nil {
		close(tn.extra.done)
	}
}

// traffic returns what passed so far, each way, in the proxy's terms.
func (tn *tunnel) traffic() (up, down Traffic) {
	u, d := tn.Traffic()
	return Traffic(u), Traffic(d)
}

// engineConfig is what the proxy's tunnels obey, from its options.
func engineConfig(c *config) engine.Config {
	return engine.Config{
		MaxMessageSize:   c.maxMessageSize,
		IdleTimeout:      c.idleTimeout,
		PingInterval:     c.pingInterval,
		MaxLifetime:      c.maxLifetime,
		CloseTimeout:     c.closeTimeout,
		HalfCloseTimeout: c.halfCloseTimeout,
		ParkAfter:        parkAfter,
		Driver:           engineDriver,
	}
}

// parkAfter, when set, replaces engine.DefaultParkAfter; the tests shorten
// it to run every pump through the reactor.
var parkAfter time.Duration

// engineDriver is the engine's driver for every tunnel; the tests force
// one or the other (engine.DriverAuto otherwise).
var engineDriver engine.Driver
