package soak

import (
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// A soak message carries everything needed to check it on its own: who sent
// it on which tunnel, its place in that tunnel's sequence, when it was sent
// and a checksum of its body. The body is random bytes.
//
//	magic    4  "SOAK"
//	client   4  client number
//	gen      4  the client's tunnel number (0 for its first tunnel)
//	flags    4  flagEmptyNext: the next message of the tunnel is empty (0 bytes);
//	            flagToken: the sender's bookkeeping (see client.size)
//	seq      8  0, 1, 2, ... per tunnel
//	sent     8  unix nanoseconds when the sender built it
//	bodyLen  4  bytes after the header
//	crc      4  CRC-32C of the body
//
// Empty messages have no header at all; the message before one says it
// follows, so their place in the stream is checked too.
const (
	msgMagic      = 0x534f414b
	msgHeaderLen  = 40
	maxMessage    = 256 << 10 // header included
	flagEmptyNext = 1
	flagToken     = 2 // the sender holds a large-message token until the echo
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

type msgHeader struct {
	client, gen, flags uint32
	seq                uint64
	sent               int64
	bodyLen, crc       uint32
}

func (h msgHeader) String() string {
	return fmt.Sprintf("c%d.g%d seq %d (%d bytes, flags %d)", h.client, h.gen, h.seq, h.bodyLen, h.flags)
}

// randomBlock is the source of every message body: a random read-only block
// that bodies are cut from at random offsets. Generating fresh random bytes
// for each message would cost more than everything else the soak does.
var randomBlock = func() []byte {
	b := make([]byte, 2*maxMessage)
	r := rand.NewChaCha8([32]byte{'w', 's', 'p', 'r', 'o', 'x', 'y'})
	r.Read(b)
	return b
}()

// buildMessage returns a message of size bytes in total (at least
// msgHeaderLen) for h, with h.bodyLen and h.crc filled in.
func buildMessage(h msgHeader, size int, rng *rand.Rand) []byte {
	body := size - msgHeaderLen
	off := rng.IntN(len(randomBlock) - body + 1)
	b := make([]byte, msgHeaderLen, size)
	b = append(b, randomBlock[off:off+body]...)
	h.bodyLen = uint32(body)
	h.crc = crc32.Checksum(b[msgHeaderLen:], crcTable)
	putHeader(b, h)
	return b
}

func putHeader(b []byte, h msgHeader) {
	binary.BigEndian.PutUint32(b[0:], msgMagic)
	binary.BigEndian.PutUint32(b[4:], h.client)
	binary.BigEndian.PutUint32(b[8:], h.gen)
	binary.BigEndian.PutUint32(b[12:], h.flags)
	binary.BigEndian.PutUint64(b[16:], h.seq)
	binary.BigEndian.PutUint64(b[24:], uint64(h.sent))
	binary.BigEndian.PutUint32(b[32:], h.bodyLen)
	binary.BigEndian.PutUint32(b[36:], h.crc)
}

var errNoMagic = errors.New("no soak header")

func parseHeader(b []byte) (msgHeader, error) {
	if len(b) < msgHeaderLen || binary.BigEndian.Uint32(b) != msgMagic {
		return msgHeader{}, errNoMagic
	}
	return msgHeader{
		client:  binary.BigEndian.Uint32(b[4:]),
		gen:     binary.BigEndian.Uint32(b[8:]),
		flags:   binary.BigEndian.Uint32(b[12:]),
		seq:     binary.BigEndian.Uint64(b[16:]),
		sent:    int64(binary.BigEndian.Uint64(b[24:])),
		bodyLen: binary.BigEndian.Uint32(b[32:]),
		crc:     binary.BigEndian.Uint32(b[36:]),
	}, nil
}

func crc32Update(crc uint32, b []byte) uint32 { return crc32.Update(crc, crcTable, b) }

// checkMessage parses a whole message and checks its length and checksum.
func checkMessage(b []byte) (msgHeader, error) {
	h, err := parseHeader(b)
	if err != nil {
		return h, err
	}
	if int(h.bodyLen) != len(b)-msgHeaderLen {
		return h, fmt.Errorf("%v: body of %d bytes, header says %d", h, len(b)-msgHeaderLen, h.bodyLen)
	}
	if got := crc32.Checksum(b[msgHeaderLen:], crcTable); got != h.crc {
		return h, fmt.Errorf("%v: checksum %08x, header says %08x", h, got, h.crc)
	}
	return h, nil
}

// mask XORs b with the masking key as if b started at offset pos of the
// payload (RFC 6455 §5.3). wsframe.Mask goes byte by byte, which under the
// race detector would cost more than the rest of the soak; this goes through
// crypto/subtle a page at a time.
func mask(key [4]byte, pos int, b []byte) {
	var ks [4096 + 4]byte
	for i := 0; i < len(ks); i += 4 {
		copy(ks[i:], key[:])
	}
	stream := ks[pos&3 : pos&3+4096]
	for len(b) > 0 {
		n := subtle.XORBytes(b, b, stream)
		b = b[n:]
	}
}

// appendFrame appends one frame, masked with key when masked is set.
func appendFrame(dst []byte, fin bool, op byte, payload []byte, masked bool, key [4]byte) []byte {
	dst = wsframe.AppendHeader(dst, wsframe.Header{Fin: fin, OpCode: op, Length: uint64(len(payload)), Masked: masked, Mask: key})
	start := len(dst)
	dst = append(dst, payload...)
	if masked {
		mask(key, 0, dst[start:])
	}
	return dst
}
