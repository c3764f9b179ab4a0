package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/examples/internal/echo"
	"github.com/wsproxy/wsproxy/internal/dnstest"
	"github.com/wsproxy/wsproxy/internal/leakcheck"
	"github.com/wsproxy/wsproxy/internal/snippet"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

// The parts of the manifests the tests read.
type meta struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels"`
}

type service struct {
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		ClusterIP string            `yaml:"clusterIP"`
		Selector  map[string]string `yaml:"selector"`
		Ports     []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort string `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type container struct {
	Name    string   `yaml:"name"`
	Args    []string `yaml:"args"`
	EnvFrom []struct {
		ConfigMapRef struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
	} `yaml:"envFrom"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	ReadinessProbe struct {
		HTTPGet struct {
			Path string `yaml:"path"`
			Port string `yaml:"port"`
		} `yaml:"httpGet"`
	} `yaml:"readinessProbe"`
	Lifecycle struct {
		PreStop struct {
			Sleep struct {
				Seconds int `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
}

type deployment struct {
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata meta `yaml:"metadata"`
			Spec     struct {
				TerminationGracePeriodSeconds int         `yaml:"terminationGracePeriodSeconds"`
				Containers                    []container `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type manifests struct {
	configMaps  map[string]map[string]string
	services    map[string]service
	deployments map[string]deployment
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	m := manifests{configMaps: map[string]map[string]string{}, services: map[string]service{}, deployments: map[string]deployment{}}
	files, err := filepath.Glob("manifests/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var doc yaml.Node
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else {
				require.NoError(t, err, f)
			}
			var head struct {
				Kind     string `yaml:"kind"`
				Metadata meta   `yaml:"metadata"`
				Data     map[string]string
			}
			require.NoError(t, doc.Decode(&head), f)
			name := head.Metadata.Name
			switch head.Kind {
			case "ConfigMap":
				m.configMaps[name] = head.Data
			case "Service":
				var s service
				require.NoError(t, doc.Decode(&s), f)
				m.services[name] = s
			case "Deployment":
				var d deployment
				require.NoError(t, doc.Decode(&d), f)
				m.deployments[name] = d
			default:
				t.Fatalf("%s: a %s the tests do not check", f, head.Kind)
			}
		}
	}
	return m
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// args returns a container's args with $(VAR) expanded from the ConfigMaps
// of its envFrom, as the kubelet does, failing on a variable none defines,
// and the keys it used.
func (m manifests) args(t *testing.T, c container) ([]string, map[string]bool) {
	t.Helper()
	env := map[string]string{}
	for _, e := range c.EnvFrom {
		data, ok := m.configMaps[e.ConfigMapRef.Name]
		require.True(t, ok, "ConfigMap %q", e.ConfigMapRef.Name)
		for k, v := range data {
			env[k] = v
		}
	}
	used := map[string]bool{}
	var out []string
	for _, a := range c.Args {
		out = append(out, varRef.ReplaceAllStringFunc(a, func(ref string) string {
			name := varRef.FindStringSubmatch(ref)[1]
			v, ok := env[name]
			assert.True(t, ok, "%s: $(%s) is defined nowhere", c.Name, name)
			used[name] = true
			return v
		}))
	}
	return out, used
}

func (d deployment) container(t *testing.T) container {
	t.Helper()
	require.Len(t, d.Spec.Template.Spec.Containers, 1, d.Metadata.Name)
	return d.Spec.Template.Spec.Containers[0]
}

func (c container) port(t *testing.T, name string) int {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %q", c.Name, name)
	return 0
}

// TestManifests: the args the manifests give are flags the program takes,
// every setting of the ConfigMap is used, selectors and ports agree, the
// proxy's backend is the headless Service's DNS name, and the drain fits in
// the backends' preStop and grace period.
func TestManifests(t *testing.T) {
	m := loadManifests(t)
	proxy, backend := m.deployments["wsproxy"], m.deployments["wsproxy-backend"]
	proxySvc, backendSvc := m.services["wsproxy"], m.services["wsproxy-backend"]
	require.NotEmpty(t, proxy.Metadata.Name)
	require.NotEmpty(t, backend.Metadata.Name)

	pc := proxy.container(t)
	args, used := m.args(t, pc)
	cfg, err := parseFlags(args)
	require.NoError(t, err, "the proxy's args: %q", args)
	assert.False(t, cfg.echo)
	for key := range m.configMaps["wsproxy-config"] {
		assert.True(t, used[key], "ConfigMap key %s is passed to no flag", key)
	}
	bc := backend.container(t)
	bargs, _ := m.args(t, bc)
	bcfg, err := parseFlags(bargs)
	require.NoError(t, err, "the backend's args: %q", bargs)
	assert.True(t, bcfg.echo)

	for _, d := range []deployment{proxy, backend} {
		assert.Equal(t, d.Spec.Selector.MatchLabels, d.Spec.Template.Metadata.Labels, d.Metadata.Name)
		c := d.container(t)
		assert.Equal(t, "/healthz", c.ReadinessProbe.HTTPGet.Path, d.Metadata.Name)
	}
	assert.Equal(t, proxy.Spec.Template.Metadata.Labels, proxySvc.Spec.Selector)
	assert.Equal(t, backend.Spec.Template.Metadata.Labels, backendSvc.Spec.Selector)
	assert.Equal(t, "None", backendSvc.Spec.ClusterIP, "the backends' Service is headless: DNS answers with every pod")

	// The proxy and the backend listen where their ports say.
	assert.Equal(t, ":"+strconv.Itoa(pc.port(t, "http")), cfg.listen)
	assert.Equal(t, ":"+strconv.Itoa(pc.port(t, "metrics")), cfg.metricsListen)
	assert.Equal(t, ":"+strconv.Itoa(bc.port(t, "ws")), bcfg.listen)

	// The proxy's backend is the headless Service, on its port.
	u, err := url.Parse(cfg.backend)
	require.NoError(t, err)
	assert.Equal(t, backendSvc.Metadata.Name+".default.svc.cluster.local", u.Hostname())
	require.Len(t, backendSvc.Spec.Ports, 1)
	assert.Equal(t, strconv.Itoa(backendSvc.Spec.Ports[0].Port), u.Port())
	assert.Equal(t, strconv.Itoa(bc.port(t, backendSvc.Spec.Ports[0].TargetPort)), u.Port())

	// A removed backend's tunnels are closed by the proxy (discovery,
	// the record's TTL, the drain timeout, the close timeout) before
	// preStop ends, and preStop ends before the grace period.
	const dnsTTL, closeTimeout = 5 * time.Second, 2 * time.Second
	preStop := time.Duration(bc.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	assert.GreaterOrEqual(t, preStop, cfg.discoveryEvery+dnsTTL+cfg.drainTimeout+closeTimeout)
	assert.Greater(t, time.Duration(backend.Spec.Template.Spec.TerminationGracePeriodSeconds)*time.Second, preStop)
	// The proxy's own shutdown fits in its grace period.
	proxyPreStop := time.Duration(pc.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	assert.Greater(t, time.Duration(proxy.Spec.Template.Spec.TerminationGracePeriodSeconds)*time.Second, proxyPreStop+cfg.shutdownTimeout)
}

func TestParseFlagsRefuses(t *testing.T) {
	tests := []struct {
		name string
		give []string
	}{
		{name: "unknown flag", give: []string{"-backend=ws://a:1", "-max-conns=3"}},
		{name: "no backend", give: []string{"-listen=:8080"}},
		{name: "bad duration", give: []string{"-backend=ws://a:1", "-drain-timeout=30"}},
		{name: "stray argument", give: []string{"-backend=ws://a:1", "extra"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.give)
			assert.Error(t, err)
		})
	}
}

// manifestConfig is the proxy's configuration from the manifests, with the
// backend's port moved to port (the test's backends listen on two loopback
// addresses at one free port) and the waits shortened.
func manifestConfig(t *testing.T, port string) config {
	t.Helper()
	m := loadManifests(t)
	args, _ := m.args(t, m.deployments["wsproxy"].container(t))
	cfg, err := parseFlags(args)
	require.NoError(t, err)
	u, err := url.Parse(cfg.backend)
	require.NoError(t, err)
	u.Host = net.JoinHostPort(u.Hostname(), port)
	cfg.backend = u.String()
	cfg.discoveryEvery, cfg.drainTimeout, cfg.shutdownTimeout = 20*time.Millisecond, 20*time.Millisecond, 5*time.Second
	return cfg
}

// twoBackends starts the echo backend on 127.0.0.1 and 127.0.0.2 at the same
// port, as two pods behind one headless Service name would be.
func twoBackends(t *testing.T, h http.Handler) (port string) {
	t.Helper()
	for range 10 {
		a, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		_, port, _ = net.SplitHostPort(a.Addr().String())
		b, err := net.Listen("tcp", "127.0.0.2:"+port)
		if err != nil {
			a.Close()
			continue
		}
		for _, ln := range []net.Listener{a, b} {
			s := httptest.NewUnstartedServer(h)
			s.Listener.Close()
			s.Listener = ln
			s.Start()
			t.Cleanup(s.Close)
		}
		return port
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return ""
}

func dialWS(t *testing.T, url string) *wstest.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := wstest.Dial(ctx, url, nil, nil)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func closeOf(t *testing.T, c *wstest.Conn) *wstest.CloseError {
	t.Helper()
	for {
		_, _, err := c.ReadMessage()
		if err != nil {
			var ce *wstest.CloseError
			require.ErrorAs(t, err, &ce)
			return ce
		}
	}
}

// TestDiscoveryAsConfigured runs the program as the manifests configure it
// against a DNS server that answers the headless Service's name with two
// pods: both get tunnels, a pod leaving the answer has its tunnel closed
// with 1001 "target removed" after the drain, /healthz answers, and the
// end of the program (SIGTERM) sends the last tunnel 1001 "shutdown".
func TestDiscoveryAsConfigured(t *testing.T) {
	port := twoBackends(t, echo.Handler(nil))
	cfg := manifestConfig(t, port)
	u, err := url.Parse(cfg.backend)
	require.NoError(t, err)
	dns := dnstest.New(t)
	dns.SetAddrs(u.Hostname()+".", "127.0.0.1", "127.0.0.2")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	metricsLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, dns.Resolver(), ln, metricsLn) }()
	t.Cleanup(func() {
		stop()
		<-done
	})
	proxyURL := "ws://" + ln.Addr().String() + u.Path
	metrics := "http://" + metricsLn.Addr().String() + "/metrics"
	open := func(addr string) string {
		return `wsproxy_tunnels_open{target="ws://` + net.JoinHostPort(addr, port) + u.Path + `"} `
	}

	// Round robin: one tunnel to each pod. Which is where, the metrics say.
	conns := map[string]*wstest.Conn{}
	for range 2 {
		c := dialWS(t, proxyURL)
		require.NoError(t, c.WriteMessage(1, []byte("hi")))
		_, msg, err := c.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, "hi", string(msg))
		m := get(t, metrics)
		for _, pod := range []string{"127.0.0.1", "127.0.0.2"} {
			if conns[pod] == nil && strings.Contains(m, open(pod)+"1") {
				conns[pod] = c
			}
		}
	}
	require.Len(t, conns, 2, "a tunnel to each pod")
	// The pod at 127.0.0.2 terminates: it leaves the DNS answer, and its
	// tunnel is closed after the drain.
	dns.SetAddrs(u.Hostname()+".", "127.0.0.1")
	assert.Equal(t, &wstest.CloseError{Code: 1001, Reason: wsproxy.ReasonTargetRemoved}, closeOf(t, conns["127.0.0.2"]))
	stays := conns["127.0.0.1"]
	require.NoError(t, stays.WriteMessage(1, []byte("still here")))
	_, msg, err := stays.ReadMessage()
	require.NoError(t, err)
	assert.Equal(t, "still here", string(msg))

	health, err := http.Get("http://" + ln.Addr().String() + "/healthz")
	require.NoError(t, err)
	health.Body.Close()
	assert.Equal(t, http.StatusOK, health.StatusCode)

	stop()
	assert.Equal(t, &wstest.CloseError{Code: 1001, Reason: wsproxy.ReasonShutdown}, closeOf(t, stays))
	assert.NoError(t, <-done)
	done <- nil // for the cleanup
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// TestWSSBackendsByDNS: wss backends found by DNS are dialled at an
// address, so their certificate is checked against -server-name; without
// it the proxy checks the address and refuses the backend (502).
func TestWSSBackendsByDNS(t *testing.T) {
	const name = "wsproxy-backend.default.svc"
	caFile, cert := testCA(t, name)
	backend := httptest.NewUnstartedServer(echo.Handler(nil))
	backend.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	backend.StartTLS()
	t.Cleanup(backend.Close)
	_, port, _ := net.SplitHostPort(backend.Listener.Addr().String())
	dns := dnstest.New(t)
	dns.SetAddrs(name+".cluster.local.", "127.0.0.1")

	tests := []struct {
		name       string
		serverName string
		wantStatus int
	}{
		{name: "with -server-name", serverName: name, wantStatus: http.StatusSwitchingProtocols},
		{name: "without", wantStatus: http.StatusBadGateway},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseFlags([]string{"-backend=wss://" + name + ".cluster.local:" + port + "/ws",
				"-server-name=" + tt.serverName, "-ca-file=" + caFile})
			require.NoError(t, err)
			p, _, err := newProxy(cfg, dns.Resolver())
			require.NoError(t, err)
			srv := httptest.NewServer(p)
			t.Cleanup(func() {
				p.Close()
				srv.Close()
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, resp, err := wstest.Dial(ctx, "ws://"+srv.Listener.Addr().String()+"/ws", nil, nil)
			require.NotNil(t, resp, "%v", err)
			assert.Equal(t, tt.wantStatus, resp.StatusCode)
			if err == nil {
				c.Close()
			}
		})
	}
}

// testCA makes a CA, writes it to a file and returns the path and a
// certificate it signed for name.
func testCA(t *testing.T, name string) (string, tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600))
	return file, tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
}

// TestProductionSnippets runs docs/PRODUCTION.md's two Go snippets as
// written, with the system resolver (DNSResolver's nil) pointed at a
// loopback DNS server that answers chat-backend's name with 127.0.0.73,
// where backends listen on the snippets' ports (an address of its own, so
// that programs on 127.0.0.1 cannot hold them); and checks that the page
// still shows exactly this code.
func TestProductionSnippets(t *testing.T) {
	dns := dnstest.New(t)
	dns.SetAddrs("chat-backend.default.svc.cluster.local.", "127.0.0.73")
	saved := net.DefaultResolver
	net.DefaultResolver = dns.Resolver()
	t.Cleanup(func() { net.DefaultResolver = saved })
	caFile, cert := testCA(t, "chat-backend.default.svc")
	pemCA, err := os.ReadFile(caFile)
	require.NoError(t, err)
	clusterCA := x509.NewCertPool()
	require.True(t, clusterCA.AppendCertsFromPEM(pemCA))
	listenOn(t, "127.0.0.73:9401", nil)
	listenOn(t, "127.0.0.73:9402", &tls.Config{Certificates: []tls.Certificate{cert}})

	proxies := map[string]func() (*wsproxy.Proxy, error){
		"discovery": func() (*wsproxy.Proxy, error) {
			// PRODUCTION: discovery
			p, err := wsproxy.New(nil, // no static targets: New looks the name up once, and fails if it cannot
				wsproxy.WithDiscovery(wsproxy.DNSResolver(nil, "ws://chat-backend.default.svc.cluster.local:9401/ws"), 5*time.Second),
				wsproxy.WithDrainTimeout(30*time.Second),
			)
			// end PRODUCTION
			return p, err
		},
		"wss": func() (*wsproxy.Proxy, error) {
			// PRODUCTION: wss
			p, err := wsproxy.New(nil,
				wsproxy.WithDiscovery(wsproxy.DNSResolver(nil, "wss://chat-backend.default.svc.cluster.local:9402/ws"), 5*time.Second),
				wsproxy.WithTLSConfig(&tls.Config{
					ServerName: "chat-backend.default.svc", // a name in the backends' certificates
					RootCAs:    clusterCA,                  // e.g. cert-manager's CA, mounted from a Secret
				}),
			)
			// end PRODUCTION
			return p, err
		},
	}
	doc, err := os.ReadFile("../../docs/PRODUCTION.md")
	require.NoError(t, err)
	self, err := os.ReadFile("main_test.go")
	require.NoError(t, err)
	for name, newProxy := range proxies {
		t.Run(name, func(t *testing.T) {
			p, err := newProxy()
			require.NoError(t, err)
			srv := httptest.NewServer(p)
			t.Cleanup(func() {
				p.Close()
				srv.Close()
			})
			c := dialWS(t, "ws://"+srv.Listener.Addr().String()+"/ws")
			require.NoError(t, c.WriteMessage(1, []byte("through "+name)))
			_, msg, err := c.ReadMessage()
			require.NoError(t, err)
			assert.Equal(t, "through "+name, string(msg))

			shown := snippet.Between(t, string(doc), "<!-- "+name+": examples/kubernetes/main_test.go -->\n```go\n", "```")
			code := snippet.Between(t, string(self), "// PRODUCTION: "+name+"\n", "\t\t\t// end PRODUCTION")
			assert.Equal(t, shown, snippet.Dedent(code, 3), "docs/PRODUCTION.md's %s snippet differs from the tested code", name)
		})
	}
}

// listenOn serves the echo backend at addr (TLS with tc, if not nil),
// failing the test if the port is taken.
func listenOn(t *testing.T, addr string, tc *tls.Config) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err, "the snippet's backend address must be free")
	s := httptest.NewUnstartedServer(echo.Handler(nil))
	s.Listener.Close()
	s.Listener = ln
	if tc != nil {
		s.TLS = tc
		s.StartTLS()
	} else {
		s.Start()
	}
	t.Cleanup(s.Close)
}
