package wstest

import (
	"context"
	"net"
	"testing"
)

// TCPPair returns the two ends of one loopback TCP connection, both closed
// when the test ends.
func TCPPair(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	return TCPPairWith(t, net.ListenConfig{}, net.Dialer{})
}

// TCPPairWith is TCPPair with the dialing end made by d and the accepted
// one by a listener from lc (socket options set before the connection
// exists, say).
func TCPPairWith(t testing.TB, lc net.ListenConfig, d net.Dialer) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept() // nil when the Dial below failed and the listener closed
		accepted <- c
	}()
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		c.Close()
		t.Fatal("wstest: the loopback listener accepted nothing")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}
