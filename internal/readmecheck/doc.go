// Package readmecheck runs the commands of the READMEs as they are written:
// README.md's and every README.md under examples/. It is a module of its own
// because it runs `go run` on the examples, one after another, on their
// default ports (nothing else of the tests may hold them meanwhile), and
// setup.sh installs curl, which a README uses.
//
// A README marks each ```sh block with an HTML comment on the line before
// it, which says what to check once the block's commands run:
//
//	<!-- ci: ws=/ws/lobby get=200:/healthz close=1001 -->
//
// Each line of the block is run with bash in the directory the block's
// `cd` lines lead to (a trailing & is dropped). A command that announces
// "listening on <URL>" on stdout or stderr is a server: it keeps running
// while the next lines run, and the checks go to the block's last server.
// Any other command must exit 0. Then every server is stopped with SIGTERM,
// sent to the program itself (not to `go run`), the last one first, and
// must exit 0. The checks:
//
//	ws=PATH          a WebSocket through the server echoes a text and a binary message
//	header="K: V"    sent with the WebSocket handshake; {N} is the stdout of the block's line N
//	first=TEXT       the first message on the WebSocket, before the echo
//	refuse=CODE:PATH a WebSocket handshake without the headers gets CODE
//	get=CODE:TARGET  a GET of TARGET (a path, or a whole URL) gets CODE (redirects not followed)
//	hsts=PATH        a GET of PATH carries Strict-Transport-Security
//	close=CODE       the open WebSocket gets a close frame with CODE when the server is stopped
//	only=N           run the block's first N lines only (the others are said why in the README)
//	skip="why"       run nothing: the block is not a command to copy as it is
//
// A server counts as started once it listens on the port it announced (its
// own socket, read from /proc). When a default port is held by another
// process (another checkout's tests, a demo left running), the block waits
// for the port to be free and runs again, a few times at most.
//
// Every ```sh block must be marked, and every example must have one. The
// test runs on Linux only: it finds the program under `go run` in /proc.
package readmecheck
