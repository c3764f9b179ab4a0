// Package interop runs wsproxy between real WebSocket implementations: Go
// (gorilla/websocket, coder/websocket, gobwas/ws, golang.org/x/net/websocket),
// Node's ws, Python's websockets and headless Chromium; and Socket.IO (npm's
// socket.io and socket.io-client, polling then upgrade) behind one proxy and
// behind two replicas, with each kind of stickiness. Everything is in the
// tests; setup.sh installs what they need.
//
// It is its own module so that the library's go.mod stays free of the
// WebSocket libraries it is tested against.
package interop
