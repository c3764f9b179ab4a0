package evloop

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Conn is a TCP connection dialled straight into a loop (Dial): a raw
// non-blocking socket registered once, with a net.Conn's blocking Read and
// Write on top, which wait for the loop to report readiness. It is for a
// connection that begins as a net.Conn (a handshake reads and writes it)
// and then becomes one of the loop's sockets: Adopt hands the registration
// to the loop's handler as it is, without a dup, a second registration or
// a net.Conn to close.
//
// One Read and one Write may run at a time, as a handshake and then two
// copying goroutines use a connection; deadlines and Close may come from
// any goroutine and wake a waiting Read or Write.
type Conn struct {
	reg    Reg // registered in place (Register)
	remote netip.AddrPort
	wake   connWake

	// mu is held shared around every system call on the descriptor and
	// exclusively to end its use, so that it is never closed (and reused)
	// under a call.
	mu   sync.RWMutex
	done bool // closed or adopted: no more calls on the descriptor

	readBy, writeBy atomic.Int64 // deadlines, unix nanoseconds; 0: none
}

// connWake is a Conn's handler: it wakes the Read or the Write that waits
// for the event. A wake-up that finds no one waiting is kept (one of each)
// for the next wait, which then tries its call again.
type connWake struct {
	read, write chan struct{}
}

func (w *connWake) Ready(_ *Reg, ev Events) {
	if ev&^Writable != 0 {
		signal(w.read)
	}
	if ev&(Writable|HangUp|Error) != 0 {
		signal(w.write)
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Dial connects to addr from a new socket registered with l: the socket
// options Go's net.Dialer sets (TCP_NODELAY; keep-alive probes after
// keepAlive idle, every 15s, 9 of them; a negative keepAlive turns them
// off), a non-blocking connect, and the loop's Writable event for its end.
// ctx bounds the connect, as it bounds net.Dialer's; errors are
// *net.OpError as net.Dialer's are.
func Dial(ctx context.Context, l *Loop, addr netip.AddrPort, keepAlive time.Duration) (*Conn, error) {
	fail := func(err error) (*Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	fd, sa, err := socketFor(addr)
	if err != nil {
		return fail(err)
	}
	setTCPOptions(fd, keepAlive)
	cerr := connect(fd, sa)
	if cerr != nil && cerr != syscall.EINPROGRESS {
		syscall.Close(fd)
		return fail(os.NewSyscallError("connect", cerr))
	}
	c := &Conn{remote: addr, wake: connWake{read: make(chan struct{}, 1), write: make(chan struct{}, 1)}}
	if err := l.Register(&c.reg, fd, &c.wake); err != nil {
		syscall.Close(fd)
		return fail(err)
	}
	if cerr == nil || isConnected(fd) {
		return c, nil
	}
	if err := c.connected(ctx); err != nil {
		c.Close()
		return fail(err)
	}
	return c, nil
}

// connect starts the connection; EINTR means it goes on in the background,
// as EINPROGRESS does.
func connect(fd int, sa syscall.Sockaddr) error {
	switch err := syscall.Connect(fd, sa); err {
	case syscall.EINTR, syscall.EALREADY:
		return syscall.EINPROGRESS
	case syscall.EISCONN:
		return nil
	default:
		return err
	}
}

// isConnected reports whether a connect that went on in the background
// has already finished. Over loopback it usually has by the time connect
// returns, and one system call here spares waiting for the loop.
func isConnected(fd int) bool {
	_, err := syscall.Getpeername(fd)
	return err == nil
}

// connected waits for the connect's end: the socket becomes writable, or
// fails, or ctx ends first.
func (c *Conn) connected(ctx context.Context) error {
	select {
	case <-c.wake.write:
	case <-ctx.Done():
		return ctx.Err()
	}
	n, err := syscall.GetsockoptInt(c.reg.Fd(), syscall.SOL_SOCKET, syscall.SO_ERROR)
	switch {
	case err != nil:
		return os.NewSyscallError("getsockopt", err)
	case n != 0:
		return os.NewSyscallError("connect", syscall.Errno(n))
	}
	return nil
}

// socketFor makes a non-blocking, close-on-exec TCP socket of addr's
// family; an IPv6 socket takes IPv4 peers too, as Go's do.
func socketFor(addr netip.AddrPort) (int, syscall.Sockaddr, error) {
	ip := addr.Addr()
	family := syscall.AF_INET6
	var sa syscall.Sockaddr
	if ip.Is4() || ip.Is4In6() {
		family = syscall.AF_INET
		sa = &syscall.SockaddrInet4{Port: int(addr.Port()), Addr: ip.Unmap().As4()}
	} else {
		sa = &syscall.SockaddrInet6{Port: int(addr.Port()), Addr: ip.As16()}
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, syscall.IPPROTO_TCP)
	if err != nil {
		return -1, nil, os.NewSyscallError("socket", err)
	}
	if family == syscall.AF_INET6 {
		syscall.SetsockoptInt(fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, 0)
	}
	return fd, sa, nil
}

// The keep-alive defaults of Go's net.Dialer.
const (
	keepAliveInterval = 15 // seconds
	keepAliveCount    = 9
)

// setTCPOptions sets what Go's net.Dialer sets on every TCP connection;
// like it, it ignores failures, which leave the kernel's defaults.
func setTCPOptions(fd int, keepAlive time.Duration) {
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	if keepAlive < 0 {
		return
	}
	if keepAlive == 0 {
		keepAlive = keepAliveInterval * time.Second
	}
	idle := int((keepAlive + time.Second - 1) / time.Second)
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, idle)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, keepAliveInterval)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveCount)
}

// Loop returns the loop the connection is registered with.
func (c *Conn) Loop() *Loop { return c.reg.l }

// Adopt moves the connection's registration into r, a zero Reg of the
// caller's (as Register takes one), with h as its handler: the socket's
// events reach h from now on, and the caller owns the socket and closes it
// with r.Close. The registration is re-armed, so that h hears of the
// socket's state as it is; an event the loop took before may still reach
// the Conn, so h must also first assume the socket readable. The Conn is
// done: its Close does nothing, and its Read and Write fail with
// net.ErrClosed. No Read or Write may be running.
func (c *Conn) Adopt(r *Reg, h Handler) {
	c.mu.Lock()
	c.done = true
	c.mu.Unlock()
	l := c.reg.l
	l.mu.Lock()
	defer l.mu.Unlock()
	// The slot and generation in the epoll events stay; the slot now
	// names r, as lookups happen under l.mu.
	r.l, r.h, r.fd, r.slot, r.gen = l, h, c.reg.fd, c.reg.slot, c.reg.gen
	l.regs[r.slot] = r
	// Re-arm it: an edge the Conn's handler took (the peer's last bytes
	// and its FIN, say) would otherwise never reach h, and a reader that
	// follows the short-read rule waits for the next edge. A modify makes
	// epoll report the socket's state as it is now.
	if p := l.run; p != nil {
		ev := r.event()
		_ = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, r.Fd(), &ev)
	}
}

// Read reads into p, waiting for the loop's word that bytes came.
func (c *Conn) Read(p []byte) (int, error) {
	for {
		n, err := c.call(&c.readBy, Read, p)
		switch {
		case err == nil, err == io.EOF:
			return n, err
		case err != ErrWouldBlock:
			return n, c.opError("read", err)
		}
		if err := c.wait(c.wake.read, &c.readBy); err != nil {
			return 0, c.opError("read", err)
		}
	}
}

// Write writes all of p, waiting for room in the send buffer as it must.
func (c *Conn) Write(p []byte) (int, error) {
	written := 0
	for {
		n, err := c.call(&c.writeBy, Write, p[written:])
		written += n
		switch {
		case err == nil:
			return written, nil
		case err != ErrWouldBlock:
			return written, c.opError("write", err)
		}
		if err := c.wait(c.wake.write, &c.writeBy); err != nil {
			return written, c.opError("write", err)
		}
	}
}

// call makes the non-blocking system call sys (Read or Write) on the
// descriptor, unless the connection is closed or the deadline by passed.
func (c *Conn) call(by *atomic.Int64, sys func(int, []byte) (int, error), p []byte) (int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	switch {
	case c.done:
		return 0, net.ErrClosed
	case expired(by.Load()):
		return 0, os.ErrDeadlineExceeded
	}
	return sys(c.reg.Fd(), p)
}

func expired(by int64) bool { return by != 0 && time.Now().UnixNano() >= by }

// wait waits for a wake-up on ch, or for the deadline by; either way the
// caller tries again and finds out which it was.
func (c *Conn) wait(ch chan struct{}, by *atomic.Int64) error {
	when := by.Load()
	if when == 0 {
		<-ch
		return nil
	}
	d := time.Duration(when - time.Now().UnixNano())
	if d <= 0 {
		return os.ErrDeadlineExceeded
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
	return nil
}

func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Addr: c.RemoteAddr(), Err: err}
}

// CloseWrite sends a FIN.
func (c *Conn) CloseWrite() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.done {
		return c.opError("close", net.ErrClosed)
	}
	return ShutdownWrite(c.reg.Fd())
}

// Close ends the connection: a waiting Read or Write returns
// net.ErrClosed, and the loop closes the descriptor. After Adopt it does
// nothing.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return nil
	}
	c.done = true
	c.mu.Unlock()
	signal(c.wake.read)
	signal(c.wake.write)
	c.reg.Close()
	return nil
}

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline makes Read fail with os.ErrDeadlineExceeded from t on,
// a waiting one included; a zero t means never.
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.setDeadline(&c.readBy, c.wake.read, t)
}

// SetWriteDeadline does for Write what SetReadDeadline does for Read.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.setDeadline(&c.writeBy, c.wake.write, t)
}

func (c *Conn) setDeadline(by *atomic.Int64, ch chan struct{}, t time.Time) error {
	var ns int64
	if !t.IsZero() {
		ns = max(t.UnixNano(), 1)
	}
	by.Store(ns)
	signal(ch) // a waiting call looks at the new deadline
	return nil
}

// RemoteAddr returns the address dialled.
func (c *Conn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }

// RemoteAddrPort returns the address dialled, without an allocation.
func (c *Conn) RemoteAddrPort() netip.AddrPort { return c.remote }

// LocalAddr returns the socket's own address, nil once it is closed.
func (c *Conn) LocalAddr() net.Addr {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.done {
		return nil
	}
	return LocalAddr(c.reg.Fd())
}
