// Package tunnel moves WebSocket frames between two connections whose
// handshake is done: the client's and the backend's. It follows frame
// boundaries in both directions (wsframe.Tracker), so that it can write
// control frames of its own between two frames (pings, close frames),
// enforce the message-size limit and the masking rule, read close codes and
// take the answers to its own pings out of the stream. It ends a tunnel
// politely (a close handshake with both peers), on timers, on errors and on
// request, through one state machine (end.go).
//
// The package knows nothing of the proxy around it: a Tunnel gets its
// Config and an Owner, and tells the owner once, when it ended, what passed
// and why it ended. The owner embeds the Tunnel in its own per-tunnel value,
// so that a tunnel costs one allocation.
//
// Two drivers move the bytes (Config.Driver). On Linux a tunnel between two
// plain TCP connections lives in one of a few event loops (loop_linux.go,
// on internal/evloop): no goroutine, no buffer and no net.Conn of its own.
// Other tunnels get a goroutine per direction; where the platform allows
// it, a TCP source (plain or under TLS) with nothing to read parks in the
// reactor (reactor_linux.go) without a goroutine or a buffer.
package tunnel

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// Config is what a tunnel obeys. One Config serves many tunnels and must
// not change once a tunnel that uses it started.
type Config struct {
	MaxMessageSize   int64         // the largest message a peer may send, in payload bytes; 0: no limit
	IdleTimeout      time.Duration // close politely after this long without a frame either way; 0: never
	PingInterval     time.Duration // ping both peers this often, and close when one did not answer; 0: no pings
	MaxLifetime      time.Duration // close politely this long after the start; 0: never
	CloseTimeout     time.Duration // how long a polite close and the linger after it may take; must be > 0
	HalfCloseTimeout time.Duration // close this long after one side sent FIN and the other did not; 0: never
	ParkAfter        time.Duration // how long a pump waits in its goroutine before it parks; 0: DefaultParkAfter
	Driver           Driver        // what moves the bytes; 0: DriverAuto
}

// A Driver is what moves a tunnel's bytes. Both drivers share the frame
// tracking (pump.chunk) and the state machine of the tunnel's end (end.go);
// they differ in who reads and writes the sockets.
type Driver uint8

const (
	// DriverAuto is DriverLoops where event loops work, else DriverGoroutines.
	DriverAuto Driver = iota
	// DriverGoroutines gives each direction a goroutine of its own, which
	// parks in the reactor when idle (Linux, plain TCP sources).
	DriverGoroutines
	// DriverLoops runs the tunnel in one of a few event loops
	// (internal/evloop, loop_linux.go) when both connections are plain TCP on
	// Linux; other tunnels (TLS, HTTP/2 streams, other systems) get
	// goroutines.
	DriverLoops
)

// wantsLoops reports whether tunnels under c should run in event loops
// where they can.
func (c *Config) wantsLoops() bool {
	switch c.Driver {
	case DriverLoops:
		return true
	case DriverGoroutines:
		return false
	}
	return loopsByDefault
}

// loopsByDefault is what DriverAuto means on systems with event loops.
const loopsByDefault = true

// DefaultParkAfter is how long a pump waits for bytes in its goroutine
// before it parks in the reactor. A busy tunnel never waits that long; a
// burst of traffic across many idle tunnels (a broadcast) wakes a goroutine
// for each, and the shorter they linger, the fewer stacks are alive at
// once. Longer spares tunnels with messages a little further apart the
// reactor's hop (some tens of microseconds of CPU per message).
const DefaultParkAfter = 100 * time.Millisecond

func (c *Config) parkAfter() time.Duration {
	if c.ParkAfter > 0 {
		return c.ParkAfter
	}
	return DefaultParkAfter
}

// An Owner learns that its tunnel ended.
type Owner interface {
	// TunnelEnded is called once, after both connections are closed and
	// both directions stopped, from the goroutine of the last one.
	TunnelEnded(Result)
}

// Result is what passed through a tunnel and why it ended.
type Result struct {
	Up   Traffic // client to backend
	Down Traffic // backend to client
	// Reason says why the tunnel ended it, one of the Reason constants or
	// the reason given to Close or Abort; "" when the peers ended it.
	Reason string
	Detail string // free text about Reason, sent in the close frames instead of it; usually ""
	Err    error  // the network error that ended the tunnel; nil for an orderly end
}

// Traffic counts what passed in one direction.
type Traffic struct {
	Bytes     int64 // written to the receiving side, the tunnel's own frames included
	Messages  int64 // complete data messages forwarded
	CloseCode int   // of the close frame the sending side sent: 1005 if it had no code, 0 if it sent none
}

// The reasons a tunnel ends itself with, as Result.Reason.
const (
	ReasonIdleTimeout           = "idle timeout"
	ReasonMaxLifetime           = "max lifetime"
	ReasonBackendNotResponding  = "backend not responding"
	ReasonClientNotResponding   = "client not responding"
	ReasonBackendConnectionLost = "backend connection lost"
	ReasonClientConnectionLost  = "client connection lost"
	ReasonHalfCloseTimeout      = "half-close timeout"
	ReasonMessageTooBig         = "message too big"
	ReasonProtocolError         = "protocol error"
)

// A Tunnel owns both connections of one WebSocket and the two pumps that
// move bytes between them. Its zero value is not usable: Init it, then
// Start it. It must not be copied after Init.
type Tunnel struct {
	cfg    *Config
	owner  Owner
	client net.Conn
	back   net.Conn

	up   pump // client to backend
	down pump // backend to client

	clock *clock        // nil unless an idle timeout or keepalive pings are configured
	ph    atomic.Uint32 // the phase of the tunnel's end (see advance, in end.go): written by advance only

	mu      sync.Mutex // guards what follows, and orders advance's decisions
	eofs    uint8      // directions that ended with EOF; advance's
	running uint8      // pumps still running (2 until the first ends); advance's
	ending  *ending    // nil until needed
}

// A clock holds the times the idle timeout and the keepalive pings go by,
// all unix nanoseconds. Only tunnels that have either get one: the others
// never look at the clock while passing bytes.
type clock struct {
	pingID     uint32          // first half of every ping payload the tunnel sends
	lastActive atomic.Int64    // the last frame passed between the peers
	lastRead   [2]atomic.Int64 // by direction (pump.dir): the last byte read from src
	pingSent   [2]atomic.Int64 // by direction: the tunnel's last ping written to dst
}

// An ending holds what ending a tunnel involves, which an idle tunnel need
// not carry: the timers to stop and why it ended. It is allocated the first
// time one of them is set. Tunnel.mu guards it.
type ending struct {
	timers []*time.Timer // stopped when the tunnel ends
	reason string        // why the tunnel was ended; "" when the peers ended it
	detail string        // free text about reason
	err    error         // the first error that ended it
}

// Init sets the tunnel up to move frames between client and back under
// cfg, and to tell owner when it ended. Nothing runs until Start, which
// must follow: from Init on the tunnel owns both connections, and under
// the loop driver it has taken their sockets out of them and closed them
// (Client still answers RemoteAddr).
func (tn *Tunnel) Init(cfg *Config, owner Owner, client, back net.Conn) {
	tn.cfg, tn.owner, tn.client, tn.back = cfg, owner, client, back
	tn.running = 2
	tn.up = pump{t: tn, fromClient: true}
	tn.down = pump{t: tn}
	if cfg.IdleTimeout > 0 || cfg.PingInterval > 0 {
		tn.clock = &clock{pingID: rand.Uint32()}
		now := time.Now().UnixNano()
		tn.clock.lastActive.Store(now)
		tn.clock.lastRead[0].Store(now)
		tn.clock.lastRead[1].Store(now)
	}
	// The one place that chooses the driver and its fast paths.
	_, clientTCP := client.(*net.TCPConn)
	_, backTCP := back.(*net.TCPConn)
	if clientTCP && (backTCP || dialledInLoop(back)) && cfg.wantsLoops() && tn.moveToLoop() {
		// Both ends are TCP sockets of one loop now, a backend from Dial
		// too: large payloads splice (splice_linux.go); nothing parks, as
		// nothing waits in a goroutine.
		tn.up.spliceOK, tn.down.spliceOK = true, true
		return
	}
	tn.up.spliceOK = clientTCP && backTCP
	tn.down.spliceOK = tn.up.spliceOK
	tn.up.parkable = canPark && parksOn(client, false)
	tn.down.parkable = canPark && parksOn(back, true)
}

// parksOn reports whether a pump reading c may park: c is TCP, plain or
// under TLS, and no TLS renegotiation can run inside a read of it, which
// happens up to TLS 1.2 on a connection we dialled (the client side of the
// handshake) if its config allows it; see loopTLS.
func parksOn(c net.Conn, dialled bool) bool {
	if tc, ok := c.(*tls.Conn); ok {
		if dialled && tc.ConnectionState().Version < tls.VersionTLS13 {
			return false
		}
		c = tc.NetConn()
	}
	_, ok := c.(*net.TCPConn)
	return ok
}

// Client returns the client's connection. Under the loop driver it is
// the tunnel's socket in its event loop, good for its addresses only.
func (tn *Tunnel) Client() net.Conn { return tn.client }

// Start runs the pumps and the timers, each pump first passing the bytes
// its source sent before the hijack (clientBuf, backBuf). The caller's
// goroutine is free to return: an idle tunnel holds no handler stack.
func (tn *Tunnel) Start(clientBuf, backBuf []byte) {
	cfg := tn.cfg
	tn.mu.Lock()
	if cfg.MaxLifetime > 0 {
		tn.addTimer(time.AfterFunc(cfg.MaxLifetime, func() {
			tn.Close(wsframe.CloseGoingAway, wsframe.CloseGoingAway, ReasonMaxLifetime)
		}))
	}
	if cfg.IdleTimeout > 0 {
		var idle *time.Timer
		idle = time.AfterFunc(cfg.IdleTimeout, func() {
			since := time.Duration(time.Now().UnixNano() - tn.clock.lastActive.Load())
			if since >= cfg.IdleTimeout {
				tn.Close(wsframe.CloseGoingAway, wsframe.CloseGoingAway, ReasonIdleTimeout)
				return
			}
			idle.Reset(cfg.IdleTimeout - since)
		})
		tn.addTimer(idle)
	}
	if cfg.PingInterval > 0 {
		var ping *time.Timer
		ping = time.AfterFunc(cfg.PingInterval, func() {
			if tn.keepalive() {
				ping.Reset(cfg.PingInterval)
			}
		})
		tn.addTimer(ping)
	}
	tn.mu.Unlock()
	if tn.startLoop(clientBuf, backBuf) {
		return
	}
	tn.up.begin(clientBuf)
	tn.down.begin(backBuf)
}

// Traffic returns what passed so far, each way.
func (tn *Tunnel) Traffic() (up, down Traffic) { return tn.up.traffic(), tn.down.traffic() }

// State is where a tunnel's end stands, for tests and diagnostics.
type State struct {
	EOFs     int // directions whose source ended cleanly
	Up, Down PumpState
}

// PumpState is where one direction stands.
type PumpState struct {
	CloseRead bool // its source sent a close frame
	CloseSent bool // a close frame was written to its destination
	Queued    bool // a control frame of the tunnel's waits for a frame boundary
	Parked    bool // it waits without a goroutine: in the reactor, or in an event loop (always)
}

// State returns where the tunnel's end stands.
func (tn *Tunnel) State() State {
	tn.mu.Lock()
	eofs := tn.eofs
	tn.mu.Unlock()
	return State{EOFs: int(eofs), Up: tn.up.state(), Down: tn.down.state()}
}

func (p *pump) state() PumpState {
	return PumpState{CloseRead: p.flags.has(fSrcClosed), CloseSent: p.flags.has(fSentClose),
		Queued: p.flags.has(fHasPending), Parked: isLoopSock(p.src()) || theReactor.holds(p)}
}

// endingLocked returns the tunnel's ending, made on first use. tn.mu is
// held.
func (tn *Tunnel) endingLocked() *ending {
	if tn.ending == nil {
		tn.ending = new(ending)
	}
	return tn.ending
}

// setReasonLocked records why the tunnel ends, unless a reason was given
// before. tn.mu is held.
func (tn *Tunnel) setReasonLocked(reason string) {
	if e := tn.endingLocked(); e.reason == "" {
		e.reason = reason
	}
}

// addTimer keeps t to be stopped when the tunnel ends. tn.mu is held.
func (tn *Tunnel) addTimer(t *time.Timer) {
	e := tn.endingLocked()
	e.timers = append(e.timers, t)
}

// now returns the time to stamp the tunnel's clock with, or 0 when the
// tunnel has no clock.
func (tn *Tunnel) now() int64 {
	if tn.clock == nil {
		return 0
	}
	return time.Now().UnixNano()
}

// sawFrame stamps a frame passed between the peers at now.
func (tn *Tunnel) sawFrame(now int64) {
	if c := tn.clock; c != nil {
		c.lastActive.Store(now)
	}
}

// keepalive checks that each peer sent something since the last ping it
// got, then pings both. It reports whether the tunnel is still alive.
func (tn *Tunnel) keepalive() bool {
	interval := tn.cfg.PingInterval.Nanoseconds()
	now := time.Now().UnixNano()
	c := tn.clock
	dead := func(reader, writer *pump) bool {
		sent := c.pingSent[writer.dir()].Load()
		return sent != 0 && c.lastRead[reader.dir()].Load() < sent && now-sent >= interval
	}
	switch {
	case dead(&tn.down, &tn.up):
		tn.Close(wsframe.CloseInternalError, wsframe.CloseGoingAway, ReasonBackendNotResponding)
		return false
	case dead(&tn.up, &tn.down):
		tn.Close(wsframe.CloseGoingAway, wsframe.CloseGoingAway, ReasonClientNotResponding)
		return false
	}
	var payload [8]byte
	binary.BigEndian.PutUint32(payload[:4], tn.clock.pingID)
	binary.BigEndian.PutUint32(payload[4:], uint32(now))
	tn.down.inject(wsframe.AppendControl(nil, wsframe.OpPing, payload[:], nil), false)
	tn.up.inject(wsframe.AppendControl(nil, wsframe.OpPing, payload[:], wsframe.NewMask()), false)
	return true
}

// isOwnPong reports whether a pong payload answers one of the tunnel's
// pings.
func (tn *Tunnel) isOwnPong(payload []byte) bool {
	return tn.clock != nil && len(payload) == 8 && binary.BigEndian.Uint32(payload) == tn.clock.pingID
}

// finish runs once, after both pumps ended and both sockets were closed:
// stop the timers and tell the owner.
func (tn *Tunnel) finish() {
	tn.mu.Lock()
	var res Result
	if e := tn.ending; e != nil {
		for _, t := range e.timers {
			t.Stop()
		}
		res.Reason, res.Detail, res.Err = e.reason, e.detail, e.err
	}
	tn.mu.Unlock()
	if res.Err != nil && (errors.Is(res.Err, net.ErrClosed) || errors.Is(res.Err, io.ErrUnexpectedEOF)) && res.Reason != "" {
		res.Err = nil
	}
	res.Up, res.Down = tn.Traffic()
	tn.owner.TunnelEnded(res)
}
