// Command echo is the WebSocket echo backend every row of the benchmark
// uses: a gorilla/websocket server that sends each message back as it came,
// with the same type, streaming it so large frames are not buffered whole.
//
//	echo -listen 127.0.0.1:9200
package main

import (
	"errors"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9200", "address to listen on")
	flag.Parse()

	up := websocket.Upgrader{
		// Reads reuse the HTTP server's 4 KiB reader; large payloads bypass it.
		// Writes take a pooled buffer only while a message is being sent, so
		// thousands of idle connections hold none. 128 KiB leaves room for a
		// whole 64 KiB bulk message, which then goes back as one frame.
		WriteBufferSize: 128 << 10,
		WriteBufferPool: &sync.Pool{},
		// The load tool sends no Origin; proxies in front may add one.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		echo(c)
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	log.Fatal(srv.Serve(ln))
}

// echo copies every message back until the peer closes. gorilla answers a
// close frame itself; the handler then returns and closes the socket, so the
// server side closes TCP first, as RFC 6455 §7.1.1 asks.
func echo(c *websocket.Conn) {
	for {
		mt, r, err := c.NextReader()
		if err != nil {
			return
		}
		w, err := c.NextWriter(mt)
		if err != nil {
			return
		}
		if _, err := io.Copy(w, r); err != nil && !errors.Is(err, io.EOF) {
			return
		}
		if err := w.Close(); err != nil {
			return
		}
	}
}
