// Package dnstest is a tiny authoritative DNS server on loopback UDP for
// tests of DNS discovery without the network: A, AAAA and SRV records set
// by the test, NXDOMAIN for other names, SERVFAIL for everything (or for
// one query type) while failing is set.
package dnstest

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// A Server answers DNS queries from the records it was given.
type Server struct {
	conn net.PacketConn
	done chan struct{}

	mu   sync.Mutex
	addr map[string][]netip.Addr
	srv  map[string][]net.SRV
	fail bool
	// failType fails only the queries of its types.
	failType map[dnsmessage.Type]bool
}

// New starts a Server; the test's cleanup stops it.
func New(t testing.TB) *Server {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{conn: conn, done: make(chan struct{}), addr: map[string][]netip.Addr{}, srv: map[string][]net.SRV{}}
	go s.serve()
	t.Cleanup(func() {
		conn.Close()
		<-s.done
	})
	return s
}

// Addr is the server's host:port (UDP).
func (s *Server) Addr() string { return s.conn.LocalAddr().String() }

// Resolver returns a pure-Go resolver that asks only this server.
func (s *Server) Resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", s.Addr())
	}}
}

// SetAddrs sets the A and AAAA records of name, a fully qualified name
// ("chat.internal.").
func (s *Server) SetAddrs(name string, addrs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addr[name] = nil
	for _, a := range addrs {
		s.addr[name] = append(s.addr[name], netip.MustParseAddr(a))
	}
}

// SetSRV sets the SRV records of name.
func (s *Server) SetSRV(name string, recs ...net.SRV) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.srv[name] = recs
}

// SetFail makes every answer SERVFAIL while fail is true.
func (s *Server) SetFail(fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = fail
}

// SetFailType makes the answers to queries of type typ (dnsmessage.TypeA,
// say) SERVFAIL while fail is true.
func (s *Server) SetFailType(typ dnsmessage.Type, fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failType == nil {
		s.failType = map[dnsmessage.Type]bool{}
	}
	s.failType[typ] = fail
}

func (s *Server) serve() {
	defer close(s.done)
	buf := make([]byte, 1500)
	for {
		n, peer, err := s.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		if msg, err := s.answer(buf[:n]); err == nil {
			s.conn.WriteTo(msg, peer)
		}
	}
}

func (s *Server) answer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	name := strings.ToLower(q.Name.String())

	s.mu.Lock()
	defer s.mu.Unlock()
	addrs, hasAddr := s.addr[name]
	srvs, hasSRV := s.srv[name]
	rcode := dnsmessage.RCodeSuccess
	switch {
	case s.fail, s.failType[q.Type]:
		rcode = dnsmessage.RCodeServerFailure
	case !hasAddr && !hasSRV:
		rcode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RCode: rcode})
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1}
	if rcode == dnsmessage.RCodeSuccess {
		switch q.Type {
		case dnsmessage.TypeA, dnsmessage.TypeAAAA:
			for _, a := range addrs {
				switch {
				case a.Is4() && q.Type == dnsmessage.TypeA:
					b.AResource(rh, dnsmessage.AResource{A: a.As4()})
				case a.Is6() && q.Type == dnsmessage.TypeAAAA:
					b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
				}
			}
		case dnsmessage.TypeSRV:
			for _, r := range srvs {
				b.SRVResource(rh, dnsmessage.SRVResource{Priority: r.Priority, Weight: r.Weight, Port: r.Port, Target: dnsmessage.MustNewName(r.Target)})
			}
		}
	}
	return b.Finish()
}
