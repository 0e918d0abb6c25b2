package proto

import (
	"encoding/binary"
	"math"
)

// Append-based msgpack for the records every transaction encodes (Work,
// Prepared, Decision): the same arrays the struct tags describe, decoded
// by the msgpack decoders as before, without the encoder's reflection and
// per-field allocations.

func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xdc), uint16(n))
	default:
		return binary.BigEndian.AppendUint32(append(b, 0xdd), uint32(n))
	}
}

func appendString(b []byte, s string) []byte {
	n := len(s)
	switch {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		b = append(b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}

func appendBytes(b []byte, v []byte) []byte {
	if v == nil {
		return append(b, 0xc0)
	}
	n := len(v)
	switch {
	case n <= math.MaxUint8:
		b = append(b, 0xc4, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
	}
	return append(b, v...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 0xc3)
	}
	return append(b, 0xc2)
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
	}
}

func appendInt(b []byte, v int64) []byte {
	switch {
	case v >= 0:
		return appendUint(b, uint64(v))
	case v >= -32:
		return append(b, byte(v))
	case v >= math.MinInt8:
		return append(b, 0xd0, byte(v))
	case v >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(v))
	case v >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(v))
	default:
		return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(v))
	}
}

func appendHeader(b []byte, h Header) []byte {
	b = appendArrayLen(b, 4)
	b = appendString(b, h.ID)
	b = appendInt(b, int64(h.Coord))
	b = appendInt(b, h.Deadline)
	return appendInt(b, h.Prio)
}

func appendRead(b []byte, r Read) []byte {
	b = appendArrayLen(b, 3)
	b = appendString(b, r.Map)
	b = appendString(b, r.Key)
	return appendUint(b, r.Version)
}

func appendWrite(b []byte, w Write) []byte {
	b = appendArrayLen(b, 10)
	b = appendString(b, w.Map)
	b = appendString(b, w.Key)
	b = appendBytes(b, w.Value)
	b = appendBool(b, w.Delete)
	b = appendBool(b, w.Add)
	b = appendInt(b, w.Delta)
	b = appendBool(b, w.HasMin)
	b = appendInt(b, w.Min)
	b = appendInt(b, w.TTL)
	return appendBool(b, w.KeepTTL)
}

// appendArray appends xs as an array of its elements (nil: msgpack's
// nil, as the encoder writes a nil slice).
func appendArray[T any](b []byte, xs []T, elem func([]byte, T) []byte) []byte {
	if xs == nil {
		return append(b, 0xc0)
	}
	b = appendArrayLen(b, len(xs))
	for _, x := range xs {
		b = elem(b, x)
	}
	return b
}

func appendReads(b []byte, rs []Read) []byte { return appendArray(b, rs, appendRead) }

func appendWrites(b []byte, ws []Write) []byte { return appendArray(b, ws, appendWrite) }

func appendInts(b []byte, xs []int) []byte {
	return appendArray(b, xs, func(b []byte, x int) []byte { return appendInt(b, int64(x)) })
}

// sizeOfWrites estimates the bytes writes encode to, for one allocation.
func sizeOfWrites(ws []Write) int {
	n := 5
	for _, w := range ws {
		n += 48 + len(w.Map) + len(w.Key) + len(w.Value)
	}
	return n
}

func appendWork(b []byte, w *Work) []byte {
	b = appendArrayLen(b, 5)
	b = appendHeader(b, w.H)
	b = appendReads(b, w.Reads)
	b = appendWrites(b, w.Writes)
	b = appendInts(b, w.Parts)
	return appendBool(b, w.Held)
}

func appendPrepared(b []byte, p *Prepared) []byte {
	b = appendArrayLen(b, 3)
	b = appendHeader(b, p.H)
	b = appendWrites(b, p.Writes)
	return appendReads(b, p.Locked)
}

func appendDecision(b []byte, d *Decision) []byte {
	b = appendArrayLen(b, 3)
	b = appendBool(b, d.Commit)
	b = appendInt(b, d.Deadline)
	return appendInts(b, d.Parts)
}

func appendFinish(b []byte, f *Finish) []byte {
	b = appendArrayLen(b, 3)
	b = appendString(b, f.ID)
	b = appendBool(b, f.Commit)
	return appendInt(b, f.Deadline)
}
