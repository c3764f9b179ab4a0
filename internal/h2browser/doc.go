// Package h2browser holds an end-to-end test: headless Chromium opens a
// WebSocket through wsproxy over HTTP/2 (RFC 8441 extended CONNECT). It is a
// module of its own so that the browser it needs stays out of the library's
// tests; setup.sh installs Debian's chromium when it is missing.
package h2browser
