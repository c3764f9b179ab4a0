module github.com/wsproxy/wsproxy/internal/loadtest

go 1.25.0

replace github.com/wsproxy/wsproxy => ../..

require (
	github.com/gorilla/websocket v1.5.3
	github.com/stretchr/testify v1.12.1
	github.com/wsproxy/wsproxy v0.0.0-00010101000000-000000000000
)

require (
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/net v0.58.0 // indirect
	golang.org/x/text v0.41.0 // indirect
)
