module github.com/wsproxy/wsproxy/internal/interop

go 1.25.0

require (
	github.com/coder/websocket v1.8.15
	github.com/gobwas/httphead v0.1.0
	github.com/gobwas/ws v1.4.0
	github.com/gorilla/websocket v1.5.3
	github.com/stretchr/testify v1.12.1
	github.com/wsproxy/wsproxy v0.0.0
	golang.org/x/net v0.58.0
)

require (
	github.com/gobwas/pool v0.2.1 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/text v0.41.0 // indirect
)

replace github.com/wsproxy/wsproxy => ../..
