package grid

import (
	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/glob"
	"github.com/collocate/grid/internal/wire"
	"github.com/google/btree"
)

// The scan index orders one map's keys of a partition by scan position
// (affinity.ScanPosition, then key), so that a page of a hash-order scan
// (RESP SCAN, Map.ScanKeys) costs O(log n + page) under the partition lock
// instead of hashing and sorting the whole partition per page. It is built
// on a map's first such scan in the partition and kept current by applyMut
// from then on; a snapshot install or a reset drops it (rebuilt on demand).

type posKey struct {
	pos uint64
	key string
}

func lessPosKey(a, b posKey) bool {
	if a.pos != b.pos {
		return a.pos < b.pos
	}
	return a.key < b.key
}

const scanIndexDegree = 32

// scanIndex returns map m's index, building it if needed. Caller holds mu.
func (p *partition) scanIndex(m string) *btree.BTreeG[posKey] {
	if t := p.scanIdx[m]; t != nil {
		return t
	}
	t := btree.NewG(scanIndexDegree, lessPosKey)
	for k := range p.maps[m] {
		t.ReplaceOrInsert(posKey{affinity.ScanPosition(k), k})
	}
	if p.scanIdx == nil {
		p.scanIdx = map[string]*btree.BTreeG[posKey]{}
	}
	p.scanIdx[m] = t
	return t
}

// indexSet and indexDelete keep a built index current. Caller holds mu.
func (p *partition) indexSet(m, k string) {
	if t := p.scanIdx[m]; t != nil {
		t.ReplaceOrInsert(posKey{affinity.ScanPosition(k), k})
	}
}

func (p *partition) indexDelete(m, k string) {
	if t := p.scanIdx[m]; t != nil {
		t.Delete(posKey{affinity.ScanPosition(k), k})
	}
}

// scanHashed serves a page of a hash-order scan of map m. The page ends on
// a position boundary, so that the next page's From (last position + 1)
// skips no key. Caller holds mu.
func (p *partition) scanHashed(m string, req *wire.ScanRequest, limit int, now int64) *wire.ScanResponse {
	kv := p.maps[m]
	resp := &wire.ScanResponse{}
	if len(kv) == 0 {
		return resp
	}
	taken, last := 0, uint64(0)
	p.scanIndex(m).AscendGreaterOrEqual(posKey{pos: req.From}, func(pk posKey) bool {
		e := kv[pk.key]
		if e == nil || !e.live(now) {
			return true
		}
		if taken >= limit && pk.pos != last {
			resp.More, resp.Next = true, last+1
			return false
		}
		taken++
		last = pk.pos
		if req.Match != "" && !glob.Match(req.Match, pk.key) {
			return true
		}
		resp.Keys = append(resp.Keys, pk.key)
		if !req.KeysOnly {
			resp.Values = append(resp.Values, e.value)
		}
		return true
	})
	return resp
}
