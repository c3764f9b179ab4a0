package tunnel

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// The TLS tests run a tunnel with TLS on both legs, as the proxy does with
// TLS in front and a wss:// target: the client peer dials the tunnel's
// client end (a tls.Server), the tunnel's backend end (a tls.Client)
// dials the backend peer. Pumps park after tlsParkAfter.

const tlsParkAfter = 5 * time.Millisecond

// testTLS returns a server config with a self-signed certificate for
// 127.0.0.1 and a client config trusting it, made once.
var testTLS = sync.OnceValues(func() (server, client *tls.Config) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	return server, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
})

// tlsPair returns the two ends of one loopback TCP connection after a TLS
// handshake over it. wrapClient and wrapServer, if not nil, wrap the TCP
// connection of that end; maxVersion, if not 0, caps the version.
func tlsPair(t *testing.T, wrapClient, wrapServer func(net.Conn) net.Conn, maxVersion uint16) (client, server *tls.Conn) {
	t.Helper()
	a, b := tcpPair(t)
	if wrapClient != nil {
		a = wrapClient(a)
	}
	if wrapServer != nil {
		b = wrapServer(b)
	}
	scfg, ccfg := testTLS()
	ccfg = ccfg.Clone()
	ccfg.MaxVersion = maxVersion
	client, server = tls.Client(a, ccfg), tls.Server(b, scfg)
	done := make(chan error, 1)
	go func() { done <- server.Handshake() }()
	require.NoError(t, client.Handshake())
	require.NoError(t, <-done)
	return client, server
}

// tlsLegs are the four TLS ends around a tunnel.
type tlsLegs struct {
	clientPeer, clientSide, backSide, backendPeer *tls.Conn
}

// newTLSLegs makes the legs; wrapClient and wrapBackend, if not nil, wrap
// the TCP connections of the client peer and the backend peer, the ones
// that write to the tunnel; backendMax caps the backend leg's TLS version.
func newTLSLegs(t *testing.T, wrapClient, wrapBackend func(net.Conn) net.Conn, backendMax uint16) tlsLegs {
	t.Helper()
	var l tlsLegs
	l.clientPeer, l.clientSide = tlsPair(t, wrapClient, nil, 0)
	l.backSide, l.backendPeer = tlsPair(t, nil, wrapBackend, backendMax)
	return l
}

// start runs a tunnel over the legs and returns it, the WebSocket ends of
// the peers and the channel its Result arrives on.
func (l tlsLegs) start(cfg *Config) (tn *Tunnel, client, backend *wstest.Conn, res ends) {
	res = make(ends, 1)
	tn = new(Tunnel)
	tn.Init(cfg, res, l.clientSide, l.backSide)
	tn.Start(nil, nil)
	client = wstest.NewConn(l.clientPeer, bufio.NewReader(l.clientPeer), true)
	backend = wstest.NewConn(l.backendPeer, bufio.NewReader(l.backendPeer), false)
	return tn, client, backend, res
}

func tlsConfig() *Config { return &Config{CloseTimeout: time.Second, ParkAfter: tlsParkAfter} }

// waitParked waits until both of tn's pumps are parked.
func waitParked(t *testing.T, tn *Tunnel) {
	t.Helper()
	require.Eventually(t, func() bool {
		s := tn.State()
		return s.Up.Parked && s.Down.Parked
	}, 5*time.Second, time.Millisecond, "both pumps park")
}

// echoOnce sends msg from the client and reads it back through an echoing
// backend.
func echoOnce(t *testing.T, client *wstest.Conn, msg string) {
	t.Helper()
	client.SetDeadline(time.Now().Add(5 * time.Second))
	require.NoError(t, client.WriteMessage(wsframe.OpText, []byte(msg)))
	_, got, err := client.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, msg, string(got))
}

// endPolitely runs the close handshake from the client and waits for the
// tunnel to end without an error.
func endPolitely(t *testing.T, client *wstest.Conn, res ends) {
	t.Helper()
	require.NoError(t, client.WriteClose(4000, "bye"))
	closedWith(t, 4000, client)
	client.Close()
	r := res.wait(t)
	assert.NoError(t, r.Err)
	assert.Equal(t, 4000, r.Up.CloseCode)
}

// TestTLSIdleTunnelsPark: idle tunnels with TLS on both legs park both
// pumps, right after the start and again after traffic, and still echo.
func TestTLSIdleTunnelsPark(t *testing.T) {
	t.Parallel()
	const n = 4
	type open struct {
		tn     *Tunnel
		client *wstest.Conn
		res    ends
	}
	var tunnels []open
	for range n {
		tn, client, backend, res := newTLSLegs(t, nil, nil, 0).start(tlsConfig())
		go wstest.Echo(backend)
		tunnels = append(tunnels, open{tn, client, res})
	}
	for round := range 2 {
		for i, o := range tunnels {
			waitParked(t, o.tn)
			echoOnce(t, o.client, fmt.Sprintf("tunnel %d round %d", i, round))
		}
	}
	for _, o := range tunnels {
		waitParked(t, o.tn)
		endPolitely(t, o.client, o.res)
	}
}

// shapedConn shapes the writes of the TCP connection under a TLS client.
// While held, writes gather and go out in one write at release. When cut
// is set, the next write is split after cut bytes (counted from the end
// if negative): the first part goes out, firstOut is closed, and the rest
// waits for resume.
type shapedConn struct {
	net.Conn
	mu       sync.Mutex
	held     bool
	gathered []byte
	cut      int
	firstOut chan struct{}
	resume   chan struct{}
}

func (c *shapedConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.held {
		c.gathered = append(c.gathered, b...)
		c.mu.Unlock()
		return len(b), nil
	}
	cut := c.cut
	c.cut = 0
	c.mu.Unlock()
	if cut == 0 {
		return c.Conn.Write(b)
	}
	if cut < 0 {
		cut += len(b)
	}
	n, err := c.Conn.Write(b[:cut])
	close(c.firstOut)
	if err != nil {
		return n, err
	}
	<-c.resume
	m, err := c.Conn.Write(b[cut:])
	return n + m, err
}

func (c *shapedConn) hold() {
	c.mu.Lock()
	c.held = true
	c.mu.Unlock()
}

// release writes what gathered in one write.
func (c *shapedConn) release() error {
	c.mu.Lock()
	b := c.gathered
	c.held, c.gathered = false, nil
	c.mu.Unlock()
	_, err := c.Conn.Write(b)
	return err
}

func (c *shapedConn) cutNext(at int) {
	c.mu.Lock()
	c.cut, c.firstOut, c.resume = at, make(chan struct{}), make(chan struct{})
	c.mu.Unlock()
}

// unread returns how many bytes wait in the socket's receive queue.
func unread(t *testing.T, c net.Conn) int {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	var n int32
	var errno syscall.Errno
	require.NoError(t, rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	}))
	require.Zero(t, errno)
	return int(n)
}

// TestTLSRecordSplitAcrossPark: a record whose bytes come in two parts,
// with the pump parked in between after reading the first, still passes:
// the first part waits in crypto/tls, and the second makes the socket
// readable.
func TestTLSRecordSplitAcrossPark(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		give int
	}{
		{"inside the header", 3},
		{"inside the payload", -5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			shaped := new(shapedConn)
			legs := newTLSLegs(t, func(c net.Conn) net.Conn { shaped.Conn = c; return shaped }, nil, 0)
			tn, client, backend, res := legs.start(tlsConfig())
			waitParked(t, tn)

			shaped.cutNext(tt.give)
			wrote := make(chan error, 1)
			go func() { wrote <- client.WriteMessage(wsframe.OpText, []byte("split record")) }()
			<-shaped.firstOut
			// The pump woke, took the first part off the socket, ran out
			// its deadline and parked again.
			require.Eventually(t, func() bool {
				return unread(t, legs.clientSide.NetConn()) == 0 && tn.State().Up.Parked
			}, 5*time.Second, time.Millisecond)
			close(shaped.resume)
			require.NoError(t, <-wrote)

			backend.SetDeadline(time.Now().Add(5 * time.Second))
			_, got, err := backend.ReadMessage()
			require.NoError(t, err)
			assert.Equal(t, "split record", string(got))
			go wstest.Echo(backend)
			endPolitely(t, client, res)
		})
	}
}

// TestTLSRecordsInOneWrite: many records in one TCP write, to a parked
// pump, all pass without more bytes coming: crypto/tls buffers those the
// first socket read brought, and the pump reads them before it waits again.
// Both directions.
func TestTLSRecordsInOneWrite(t *testing.T) {
	t.Parallel()
	const n = 50
	var fromClient, fromBack shapedConn
	legs := newTLSLegs(t,
		func(c net.Conn) net.Conn { fromClient.Conn = c; return &fromClient },
		func(c net.Conn) net.Conn { fromBack.Conn = c; return &fromBack }, 0)
	tn, client, backend, res := legs.start(tlsConfig())
	client.SetDeadline(time.Now().Add(5 * time.Second))
	backend.SetDeadline(time.Now().Add(5 * time.Second))
	waitParked(t, tn)

	// Up: the client's n messages, one record each, in one write.
	fromClient.hold()
	for i := range n {
		require.NoError(t, client.WriteMessage(wsframe.OpText, fmt.Appendf(nil, "up %d", i)))
	}
	require.NoError(t, fromClient.release())
	for i := range n {
		_, got, err := backend.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprintf("up %d", i), string(got))
	}
	waitParked(t, tn)

	// Down: the backend's n messages likewise.
	fromBack.hold()
	for i := range n {
		require.NoError(t, backend.WriteMessage(wsframe.OpText, fmt.Appendf(nil, "down %d", i)))
	}
	require.NoError(t, fromBack.release())
	for i := range n {
		_, got, err := client.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprintf("down %d", i), string(got))
	}
	go wstest.Echo(backend)
	endPolitely(t, client, res)
}

// TestTLSRecordsBufferedBeforeStart: records crypto/tls read from the
// socket before the tunnel started (as net/http does reading the upgrade
// request) pass at once: a fresh TLS pump reads before it parks, as the
// socket will not announce them.
func TestTLSRecordsBufferedBeforeStart(t *testing.T) {
	t.Parallel()
	var fromClient shapedConn
	legs := newTLSLegs(t, func(c net.Conn) net.Conn { fromClient.Conn = c; return &fromClient }, nil, 0)
	fromClient.hold()
	_, err := legs.clientPeer.Write([]byte("request"))
	require.NoError(t, err)
	frame := wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpText, Payload: []byte("early")}, true)
	_, err = legs.clientPeer.Write(frame)
	require.NoError(t, err)
	require.NoError(t, fromClient.release())
	buf := make([]byte, 64)
	legs.clientSide.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := legs.clientSide.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "request", string(buf[:n]), "one record per Read: the frame's record stays in crypto/tls")
	legs.clientSide.SetReadDeadline(time.Time{})

	_, client, backend, res := legs.start(tlsConfig())
	backend.SetDeadline(time.Now().Add(5 * time.Second))
	_, got, err := backend.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, "early", string(got))
	go wstest.Echo(backend)
	endPolitely(t, client, res)
}

// TestTLSParkedTunnelEnds: Close and Abort end a tunnel whose TLS pumps
// are parked: the close frames go out through the TLS ends while both
// pumps wait in the reactor, and the pumps wake to end (TestMain checks
// that no goroutine is left).
func TestTLSParkedTunnelEnds(t *testing.T) {
	t.Parallel()
	t.Run("close", func(t *testing.T) {
		t.Parallel()
		tn, client, backend, res := newTLSLegs(t, nil, nil, 0).start(tlsConfig())
		waitParked(t, tn)
		tn.Close(wsframe.CloseGoingAway, wsframe.CloseInternalError, "going")
		client.SetDeadline(time.Now().Add(5 * time.Second))
		backend.SetDeadline(time.Now().Add(5 * time.Second))
		assert.Equal(t, []string{"going"}, closedWith(t, wsframe.CloseGoingAway, client))
		assert.Equal(t, []string{"going"}, closedWith(t, wsframe.CloseInternalError, backend))
		client.Close()
		backend.Close()
		r := res.wait(t)
		assert.Equal(t, "going", r.Reason)
		assert.NoError(t, r.Err)
	})
	t.Run("abort", func(t *testing.T) {
		t.Parallel()
		tn, client, backend, res := newTLSLegs(t, nil, nil, 0).start(tlsConfig())
		waitParked(t, tn)
		tn.Abort("stop")
		for _, peer := range []*wstest.Conn{client, backend} {
			peer.SetDeadline(time.Now().Add(5 * time.Second))
			_, _, err := peer.ReadMessage()
			assert.Error(t, err)
		}
		assert.Equal(t, "stop", res.wait(t).Reason)
	})
	t.Run("peer hangs up", func(t *testing.T) {
		t.Parallel()
		tn, client, backend, res := newTLSLegs(t, nil, nil, 0).start(tlsConfig())
		go wstest.Echo(backend) // hangs up when the client's FIN reaches it
		waitParked(t, tn)
		client.Close()
		r := res.wait(t)
		assert.Equal(t, 0, r.Up.CloseCode, "no close frame")
	})
}

// TestTLS12BackendDoesNotPark: a TLS 1.2 connection the tunnel dialled
// may renegotiate inside a Read, which a read deadline would break, so
// its pump waits in Read; the client's pump still parks.
func TestTLS12BackendDoesNotPark(t *testing.T) {
	t.Parallel()
	legs := newTLSLegs(t, nil, nil, tls.VersionTLS12)
	require.Equal(t, uint16(tls.VersionTLS12), legs.backSide.ConnectionState().Version)
	tn, client, backend, res := legs.start(tlsConfig())
	assert.True(t, tn.up.parkable)
	assert.False(t, tn.down.parkable)
	go wstest.Echo(backend)
	require.Eventually(t, func() bool { return tn.State().Up.Parked }, 5*time.Second, time.Millisecond)
	echoOnce(t, client, "tls 1.2")
	endPolitely(t, client, res)
}

// TestTLSRecordSizes: records around the size of the buffer a TLS pump
// waits in pass whole and at once, each sent to parked pumps: one that
// fills it exactly (the drain finds nothing more and must not wait), one
// byte more or less, and a message of many full records.
func TestTLSRecordSizes(t *testing.T) {
	t.Parallel()
	tn, client, backend, res := newTLSLegs(t, nil, nil, 0).start(tlsConfig())
	go wstest.Echo(backend)
	// A masked client frame of payload n has a header of 8 bytes
	// (126 < n < 64 KiB); the backend's echo has 4.
	for _, size := range []int{tlsWaitSize - 8, tlsWaitSize - 4, tlsWaitSize - 9, tlsWaitSize - 7, 70 << 10} {
		waitParked(t, tn)
		msg := make([]byte, size)
		for i := range msg {
			msg[i] = byte(i * 7)
		}
		client.SetDeadline(time.Now().Add(5 * time.Second))
		require.NoError(t, client.WriteMessage(wsframe.OpBinary, msg))
		_, got, err := client.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, msg, got, "size %d", size)
	}
	endPolitely(t, client, res)
}
