// Command loadbalance shows how wsproxy spreads long-lived WebSocket
// connections: it starts echo backends on loopback, a proxy with the
// LeastConn policy in front of them, opens client connections and prints
// how many tunnels each backend holds. Then it adds a backend while the
// connections stay open, and shows new tunnels going to the newcomer until
// it has caught up.
//
//	go run ./examples/loadbalance -clients 30
//
// The echo backends and the client come from internal/wstest, a small
// WebSocket implementation used by wsproxy's tests; in a real deployment
// they are your servers and your users' browsers.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"text/tabwriter"
	"time"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

func main() {
	clients := flag.Int("clients", 30, "client connections to open in the first round")
	backends := flag.Int("backends", 3, "echo backends to start")
	flag.Parse()
	if err := run(*clients, *backends); err != nil {
		log.Fatal(err)
	}
}

func run(clients, backends int) error {
	var targets []string
	for range backends {
		url, stop, err := startEcho()
		if err != nil {
			return err
		}
		defer stop()
		targets = append(targets, url)
	}

	p, err := wsproxy.New(targets,
		wsproxy.WithBalancer(wsproxy.LeastConn()),
		wsproxy.WithHealthCheck(wsproxy.HealthCheck{Interval: 2 * time.Second}),
	)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx) // close frames 1001 to every tunnel
		srv.Shutdown(ctx)
	}()
	proxyURL := "ws://" + ln.Addr().String() + "/echo"

	var conns []*wstest.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	open := func(n int) error {
		for range n {
			c, err := connect(proxyURL)
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	}

	if err := open(clients); err != nil {
		return err
	}
	fmt.Printf("%d clients over %d backends, LeastConn:\n", clients, backends)
	printStats(p)

	// Scale out while every connection stays open: LeastConn sends the next
	// tunnels to the new backend, which holds none.
	url, stop, err := startEcho()
	if err != nil {
		return err
	}
	defer stop()
	if err := p.SetTargets(append(targets, url)); err != nil {
		return err
	}
	more := clients / backends
	if err := open(more); err != nil {
		return err
	}
	fmt.Printf("\nbackend added, %d more clients:\n", more)
	printStats(p)
	return nil
}

// connect opens a WebSocket through the proxy and checks that it echoes.
func connect(url string) (*wstest.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := wstest.Dial(ctx, url, nil, nil)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if err := c.WriteMessage(wsframe.OpText, []byte("hello")); err != nil {
		c.Close()
		return nil, err
	}
	if _, _, err := c.ReadMessage(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func printStats(p *wsproxy.Proxy) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  target\topen\ttotal\thealthy")
	for _, t := range p.Stats().Targets {
		fmt.Fprintf(w, "  %s\t%d\t%d\t%v\n", t.Target, t.Open, t.Total, t.Healthy)
	}
	w.Flush()
}

// startEcho starts an echo backend on a loopback port.
func startEcho() (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: wstest.EchoHandler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return "ws://" + ln.Addr().String(), func() { srv.Close() }, nil
}
