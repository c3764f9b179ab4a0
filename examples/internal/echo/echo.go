// Package echo is the WebSocket backend the examples start for themselves
// when they are given no -backend, so that each one runs alone and shows a
// message going through the proxy and back. In a real deployment the
// backend is your own server.
package echo

import (
	"log"
	"net"
	"net/http"
	"time"
	"unicode/utf8"

	"golang.org/x/net/websocket"
)

// Handler answers every WebSocket message with the same message. When
// greet is not nil, the first message on each connection is greet's answer
// for the upgrade request (what the backend learnt from the proxy's headers).
func Handler(greet func(*http.Request) string) http.Handler {
	return websocket.Server{
		// The proxy in front checked the origin; a backend behind it does
		// not check again.
		Handshake: func(*websocket.Config, *http.Request) error { return nil },
		Handler: func(c *websocket.Conn) {
			defer c.Close() // answers the client's close frame
			if greet != nil && websocket.Message.Send(c, greet(c.Request())) != nil {
				return
			}
			for {
				var msg []byte
				if err := websocket.Message.Receive(c, &msg); err != nil {
					return
				}
				// x/net/websocket does not report a frame's type: valid
				// UTF-8 goes back as text, the rest as binary.
				var err error
				if utf8.Valid(msg) {
					err = websocket.Message.Send(c, string(msg))
				} else {
					err = websocket.Message.Send(c, msg)
				}
				if err != nil {
					return
				}
			}
		},
	}
}

// Start serves h on a free loopback port and returns the ws:// URL of it,
// and a function that stops it.
func Start(h http.Handler) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return "ws://" + ln.Addr().String(), func() { srv.Close() }, nil
}

// OrBuiltIn returns backend when it is set. When it is empty, it starts
// the built-in echo backend (Handler(greet)) and returns its URL, and stop
// ends it.
func OrBuiltIn(backend string, greet func(*http.Request) string) (url string, stop func(), err error) {
	if backend != "" {
		return backend, func() {}, nil
	}
	url, stop, err = Start(Handler(greet))
	if err == nil {
		log.Printf("no -backend given: built-in echo backend on %s", url)
	}
	return url, stop, err
}
