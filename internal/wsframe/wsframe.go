// Package wsframe reads and writes WebSocket frame headers (RFC 6455 §5.2).
//
// It is deliberately small: the proxy never decodes payloads, it only needs
// to know where each frame starts and ends, to read the short payload of
// control frames, and to write its own control frames.
package wsframe

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"unicode/utf8"
)

// Opcodes (RFC 6455 §5.2).
const (
	OpContinuation = 0x0
	OpText         = 0x1
	OpBinary       = 0x2
	OpClose        = 0x8
	OpPing         = 0x9
	OpPong         = 0xA
)

// MaxHeaderLen is the longest frame header: 2 bytes, 8 bytes of extended
// length and a 4-byte mask.
const MaxHeaderLen = 14

// MaxControlPayload is the largest payload a control frame may carry (§5.5).
const MaxControlPayload = 125

// MaxControlFrame is the longest control frame on the wire: masked and with
// its length in the 8-byte form, which ParseHeader accepts as merely
// non-minimal.
const MaxControlFrame = MaxHeaderLen + MaxControlPayload

// Close codes (RFC 6455 §7.4.1) the proxy sends or reports.
const (
	CloseNormal          = 1000
	CloseGoingAway       = 1001
	CloseProtocolError   = 1002
	CloseNoStatus        = 1005 // never on the wire: "no code in the close frame"
	CloseAbnormal        = 1006 // never on the wire: "no close frame at all"
	ClosePolicyViolation = 1008
	CloseMessageTooBig   = 1009
	CloseInternalError   = 1011
)

// Header is a parsed frame header.
type Header struct {
	Fin    bool
	Rsv    byte // the three RSV bits, in the low bits
	OpCode byte
	Masked bool
	Mask   [4]byte
	Length uint64 // payload length
}

// IsControl reports whether the opcode is a control opcode (close, ping, pong,
// or a reserved one from 0xB to 0xF).
func (h Header) IsControl() bool { return h.OpCode&0x8 != 0 }

// Errors for headers that cannot be part of a valid stream.
var (
	ErrLength         = errors.New("wsframe: 64-bit payload length has its most significant bit set")
	ErrControlLength  = errors.New("wsframe: control frame payload longer than 125 bytes")
	ErrControlFin     = errors.New("wsframe: fragmented control frame")
	ErrReservedOpCode = errors.New("wsframe: reserved opcode")
	ErrNonMinimal     = errors.New("wsframe: payload length not minimally encoded")
)

// HeaderLen returns the length of the header that starts with bytes b0 and
// b1: it depends only on the second byte.
func HeaderLen(b1 byte) int {
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&0x80 != 0 {
		n += 4
	}
	return n
}

// ParseHeader parses the frame header at the start of b. It returns the
// header and its length in bytes, or n == 0 and a nil error when b holds only
// part of a header. A non-nil error means the bytes can never be a valid
// header; n is then the header length, so a caller may still skip it.
//
// Non-minimal length encodings (RFC 6455 §5.2 "the minimal number of bytes
// MUST be used") are reported with ErrNonMinimal but are otherwise parsed,
// since the proxy can follow them without harm.
func ParseHeader(b []byte) (h Header, n int, err error) {
	if len(b) < 2 {
		return h, 0, nil
	}
	n = HeaderLen(b[1])
	if len(b) < n {
		return h, 0, nil
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] >> 4) & 0x7
	h.OpCode = b[0] & 0xf
	h.Masked = b[1]&0x80 != 0
	p := 2
	switch l := b[1] & 0x7f; l {
	case 126:
		h.Length = uint64(binary.BigEndian.Uint16(b[2:4]))
		p = 4
		if h.Length < 126 {
			err = ErrNonMinimal
		}
	case 127:
		h.Length = binary.BigEndian.Uint64(b[2:10])
		p = 10
		if h.Length>>63 != 0 {
			return h, n, ErrLength
		}
		if h.Length <= 0xffff {
			err = ErrNonMinimal
		}
	default:
		h.Length = uint64(l)
	}
	if h.Masked {
		copy(h.Mask[:], b[p:p+4])
	}
	switch {
	case h.OpCode >= 0x3 && h.OpCode <= 0x7, h.OpCode >= 0xB:
		return h, n, ErrReservedOpCode
	case h.IsControl() && h.Length > MaxControlPayload:
		return h, n, ErrControlLength
	case h.IsControl() && !h.Fin:
		return h, n, ErrControlFin
	}
	return h, n, err
}

// AppendHeader appends the wire form of h to dst, with the minimal length
// encoding.
func AppendHeader(dst []byte, h Header) []byte {
	b0 := h.OpCode & 0xf
	if h.Fin {
		b0 |= 0x80
	}
	b0 |= (h.Rsv & 0x7) << 4
	var b1 byte
	if h.Masked {
		b1 = 0x80
	}
	switch {
	case h.Length < 126:
		dst = append(dst, b0, b1|byte(h.Length))
	case h.Length <= 0xffff:
		dst = append(dst, b0, b1|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(h.Length))
	default:
		dst = append(dst, b0, b1|127)
		dst = binary.BigEndian.AppendUint64(dst, h.Length)
	}
	if h.Masked {
		dst = append(dst, h.Mask[:]...)
	}
	return dst
}

// Mask XORs b with the key, as if b started at offset pos of the payload, and
// returns the offset after b. Masking and unmasking are the same operation.
func Mask(key [4]byte, pos int, b []byte) int {
	for i := range b {
		b[i] ^= key[(pos+i)&3]
	}
	return (pos + len(b)) & 3
}

// AppendControl appends a whole control frame. With mask non-nil the payload
// is masked with it, as frames from a client must be (§5.3).
func AppendControl(dst []byte, op byte, payload []byte, mask *[4]byte) []byte {
	h := Header{Fin: true, OpCode: op, Length: uint64(len(payload))}
	if mask != nil {
		h.Masked = true
		h.Mask = *mask
	}
	dst = AppendHeader(dst, h)
	start := len(dst)
	dst = append(dst, payload...)
	if mask != nil {
		Mask(*mask, 0, dst[start:])
	}
	return dst
}

// ClosePayload returns a close frame payload with the code and the reason,
// truncating the reason at a rune boundary to fit in a control frame.
func ClosePayload(code uint16, reason string) []byte {
	if len(reason) > MaxControlPayload-2 {
		reason = reason[:MaxControlPayload-2]
		for len(reason) > 0 && !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	b := make([]byte, 2, 2+len(reason))
	binary.BigEndian.PutUint16(b, code)
	return append(b, reason...)
}

// ParseClose returns the code and reason of an (unmasked) close payload. An
// empty payload has code CloseNoStatus (§7.1.5).
func ParseClose(payload []byte) (code uint16, reason string) {
	if len(payload) < 2 {
		return CloseNoStatus, ""
	}
	return binary.BigEndian.Uint16(payload), string(payload[2:])
}

// NewMask returns a random masking key for a frame a client sends.
func NewMask() *[4]byte {
	var m [4]byte
	binary.LittleEndian.PutUint32(m[:], rand.Uint32())
	return &m
}
