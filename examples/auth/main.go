// Command auth authenticates WebSocket upgrades before they reach the
// backend: the browser's session cookie (or an Authorization: Bearer
// header from other clients) must carry a valid HS256 JWT, verified with
// github.com/golang-jwt/jwt/v5, and the user it names is passed to the
// backend in X-User. Requests without a valid token get 401 and never
// touch a backend.
//
//	go run . -token alice -secret s3cret   # prints a token to try
//	go run . -secret s3cret                # built-in backend: greets the user, then echoes
//	go run . -secret s3cret -backend ws://127.0.0.1:9001
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/examples/internal/echo"
)

type userKey struct{}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	backend := flag.String("backend", "", "WebSocket backend URL (default: a built-in backend that greets the user, then echoes)")
	secret := flag.String("secret", "", "HMAC secret of the tokens (required)")
	mint := flag.String("token", "", "print a one-hour token for this user and exit")
	flag.Parse()
	if *secret == "" {
		log.Fatal("-secret is required")
	}
	if *mint != "" {
		token, err := sign([]byte(*secret), *mint, time.Hour)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(token)
		return
	}
	target, stopBackend, err := echo.OrBuiltIn(*backend, func(r *http.Request) string {
		return "hello " + r.Header.Get("X-User")
	})
	if err != nil {
		log.Fatal(err)
	}
	defer stopBackend()

	p, err := newProxy(target)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	// No method in the pattern: HTTP/2 WebSockets are CONNECT requests.
	mux.Handle("/ws", requireUser([]byte(*secret), p))
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	log.Printf("listening on http://%s, WebSockets on /ws with a token", ln.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p.Shutdown(ctx) // first: tunnels get 1001
	srv.Shutdown(ctx)
}

// newProxy returns a proxy that passes the verified user to target in
// X-User.
func newProxy(target string) (*wsproxy.Proxy, error) {
	return wsproxy.New([]string{target},
		// The user comes from the verified token, never from the client's
		// own headers: the hook overwrites any X-User the client sent.
		wsproxy.WithRewrite(func(pr *wsproxy.ProxyRequest) {
			pr.Out.Header.Del("X-User")
			if user, ok := pr.In.Context().Value(userKey{}).(string); ok {
				pr.Out.Header.Set("X-User", user)
			}
		}),
	)
}

// requireUser lets a request through only with a valid token, and puts the
// user in its context for the rewrite hook.
func requireUser(secret []byte, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token := ""
		if c, err := r.Cookie("session"); err == nil {
			token = c.Value
		} else if h, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			token = h
		}
		user, err := verify(secret, token)
		if err != nil {
			http.Error(w, "unauthorized: "+err.Error(), http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, user)))
	})
}

// sign returns an HS256 token for user that expires after ttl.
func sign(secret []byte, user string, ttl time.Duration) (string, error) {
	now := time.Now()
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject:   user,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}).SignedString(secret)
}

// errNoSubject is a valid token that names nobody.
var errNoSubject = errors.New("token has no subject")

// verify returns the user a token names. Only HS256 is accepted (never
// "none", never a key confusion with another algorithm), with a valid
// signature and an expiry in the future.
func verify(secret []byte, token string) (string, error) {
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
	)
	if err != nil {
		return "", err
	}
	if claims.Subject == "" {
		return "", errNoSubject
	}
	return claims.Subject, nil
}
