// Command auth authenticates WebSocket upgrades before they reach the
// backend: the browser's session cookie (or an Authorization: Bearer
// header from other clients) must carry a valid HS256 JWT, and the user it
// names is passed to the backend in X-User. Requests without a valid token
// get 401 and never touch a backend.
//
//	go run ./examples/auth -backend ws://127.0.0.1:9001 -secret s3cret
//	go run ./examples/auth -token alice -secret s3cret   # prints a token to try
package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"strings"
	"time"

	"github.com/wsproxy/wsproxy"
)

type userKey struct{}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	backend := flag.String("backend", "ws://127.0.0.1:9001", "WebSocket backend")
	secret := flag.String("secret", "", "HMAC secret of the tokens (required)")
	mint := flag.String("token", "", "print a one-hour token for this user and exit")
	flag.Parse()
	if *secret == "" {
		log.Fatal("-secret is required")
	}
	if *mint != "" {
		fmt.Println(sign([]byte(*secret), claims{Sub: *mint, Exp: time.Now().Add(time.Hour).Unix()}))
		return
	}

	p, err := wsproxy.New([]string{*backend},
		// The user comes from the verified token, never from the client's
		// own headers: the hook overwrites any X-User the client sent.
		wsproxy.WithRewrite(func(pr *wsproxy.ProxyRequest) {
			pr.Out.Header.Del("X-User")
			if user, ok := pr.In.Context().Value(userKey{}).(string); ok {
				pr.Out.Header.Set("X-User", user)
			}
		}),
	)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /ws", requireUser([]byte(*secret), p))
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("listening on %s", *listen)
	log.Fatal(srv.ListenAndServe())
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
		cl, err := verify(secret, token, time.Now())
		if err != nil {
			http.Error(w, "unauthorized: "+err.Error(), http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, cl.Sub)))
	})
}

type claims struct {
	Sub string `json:"sub"`
	Exp int64  `json:"exp"`
}

var b64 = base64.RawURLEncoding

const jwtHeader = `{"alg":"HS256","typ":"JWT"}`

func sign(secret []byte, c claims) string {
	body, _ := json.Marshal(c)
	msg := b64.EncodeToString([]byte(jwtHeader)) + "." + b64.EncodeToString(body)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(msg))
	return msg + "." + b64.EncodeToString(mac.Sum(nil))
}

// verify checks an HS256 JWT: only that algorithm, a valid signature, an
// expiry in the future and a subject.
func verify(secret []byte, token string, now time.Time) (claims, error) {
	var c claims
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return c, errors.New("malformed token")
	}
	hdr, err := b64.DecodeString(parts[0])
	if err != nil || string(hdr) != jwtHeader {
		return c, errors.New("unsupported token header")
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := b64.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, mac.Sum(nil)) {
		return c, errors.New("bad signature")
	}
	body, err := b64.DecodeString(parts[1])
	if err != nil || json.Unmarshal(body, &c) != nil {
		return c, errors.New("malformed claims")
	}
	if c.Sub == "" || now.Unix() >= c.Exp {
		return c, errors.New("expired or anonymous token")
	}
	return c, nil
}
