module github.com/wsproxy/wsproxy/internal/h2browser

go 1.25.0

require (
	github.com/stretchr/testify v1.12.1
	github.com/wsproxy/wsproxy v0.0.0
)

require (
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/net v0.58.0 // indirect
	golang.org/x/text v0.41.0 // indirect
)

replace github.com/wsproxy/wsproxy => ../..
