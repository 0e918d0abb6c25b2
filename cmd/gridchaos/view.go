package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// httpClient is the harness' client for the nodes' HTTP endpoints (owned by
// the process; its timeout bounds every probe).
var httpClient = &http.Client{Timeout: 2 * time.Second}

func getJSON(ctx context.Context, url string, v any) error {
	b, err := getBody(ctx, url)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// getBody GETs url and returns the body of a 200 answer.
func getBody(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

type partView struct {
	Primary string   `json:"primary"`
	Backups []string `json:"backups"`
	Pending []string `json:"pending"`
}

// memberView is a member as a node's membership sees it.
type memberView struct {
	Name   string `json:"name"`
	Status string `json:"status"`
}

// clusterView is a node's /v1/cluster.
type clusterView struct {
	Version    uint64       `json:"version"`
	Leader     string       `json:"leader"`
	Voters     []string     `json:"voters"`
	Members    []memberView `json:"members"`
	Partitions []partView   `json:"partitions"`
}

// status returns how this node's membership sees name ("absent" if not
// at all).
func (cv *clusterView) status(name string) string {
	for _, m := range cv.Members {
		if m.Name == name {
			return m.Status
		}
	}
	return "absent"
}

// unused describes the running members the table places nothing on, with
// how the reporting node's membership sees them and who leads: a member
// the authority dropped while its process runs shows here as, say,
// "leaving".
func unused(node string, names []string, seen map[string]bool, cv *clusterView) string {
	var out []string
	for _, n := range names {
		if !seen[n] {
			out = append(out, fmt.Sprintf("%s (%s sees it %s)", n, node, cv.status(n)))
		}
	}
	leader := cv.Leader
	if leader == "" {
		leader = "none"
	}
	return fmt.Sprintf("table %d uses %d of %d members; unused: %s; leader: %s",
		cv.Version, len(seen), len(names), strings.Join(out, ", "), leader)
}

// names reports whether the view places anything on name.
func (cv *clusterView) names(name string) bool {
	for _, p := range cv.Partitions {
		if p.Primary == name || slices.Contains(p.Backups, name) || slices.Contains(p.Pending, name) {
			return true
		}
	}
	return false
}

// pending returns the partitions with replicas being filled.
func (cv *clusterView) pending() []int {
	var out []int
	for i, p := range cv.Partitions {
		if len(p.Pending) > 0 {
			out = append(out, i)
		}
	}
	return out
}

// latest returns the newest table any running, unpaused node shows.
func (h *harness) latest(ctx context.Context) (*clusterView, error) {
	var best *clusterView
	var lastErr error
	for _, p := range h.running() {
		if p.paused {
			continue
		}
		var cv clusterView
		if err := getJSON(ctx, p.httpURL+"/v1/cluster", &cv); err != nil {
			lastErr = err
			continue
		}
		if best == nil || cv.Version > best.Version {
			best = &cv
		}
	}
	if best == nil {
		if lastErr == nil {
			lastErr = errors.New("no running node")
		}
		return nil, lastErr
	}
	return best, nil
}

// viewFrom returns p's table, or the newest table if p is nil.
func (h *harness) viewFrom(ctx context.Context, p *proc) (*clusterView, error) {
	if p == nil {
		return h.latest(ctx)
	}
	var cv clusterView
	if err := getJSON(ctx, p.httpURL+"/v1/cluster", &cv); err != nil {
		return nil, err
	}
	return &cv, nil
}

// unsafe says why the cluster is not safe for the next fault, or "": every
// running node healthy and at the same table, every partition with a live
// primary and its full set of live backups, nothing pending, every member
// used.
func (h *harness) unsafe(ctx context.Context) string {
	live := h.running()
	var names []string
	for _, p := range live {
		if p.paused {
			return p.name + " is paused"
		}
		if p.exited() {
			return p.name + " exited on its own; its log ends: " + p.logTail(5)
		}
		names = append(names, p.name)
	}
	want := min(h.cfg.Backups, len(live)-1)
	var version uint64
	var first clusterView
	for i, p := range live {
		resp, err := httpClient.Get(p.httpURL + "/healthz")
		if err != nil {
			return p.name + ": " + err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return p.name + " not healthy"
		}
		var cv clusterView
		if err := getJSON(ctx, p.httpURL+"/v1/cluster", &cv); err != nil {
			return err.Error()
		}
		if i == 0 {
			version, first = cv.Version, cv
		} else if cv.Version != version {
			return fmt.Sprintf("%s at table %d, %s at %d", live[0].name, version, p.name, cv.Version)
		}
		for name, v := range h.restartedAt {
			if q := h.byName(name); q != nil && q.running && cv.Version <= v {
				return fmt.Sprintf("table %d predates the restart of %s (after table %d)", cv.Version, name, v)
			}
		}
		seen := map[string]bool{}
		for pid, part := range cv.Partitions {
			if !slices.Contains(names, part.Primary) || len(part.Backups) != want || len(part.Pending) > 0 {
				return fmt.Sprintf("partition %d not converged: %+v", pid, part)
			}
			seen[part.Primary] = true
			for _, b := range part.Backups {
				if !slices.Contains(names, b) {
					return fmt.Sprintf("partition %d has a backup that is not running: %+v", pid, part)
				}
				seen[b] = true
			}
		}
		if len(seen) != len(names) {
			return unused(p.name, names, seen, &cv)
		}
	}
	return h.primariesServe(ctx, &first)
}

// primariesServe says which partitions' table primary does not hold the
// primary role on its node, or "". A table can be converged while its
// primaries serve nothing (a new, empty incarnation named where its
// predecessor was refuses primacy): no write or read reaches those
// partitions, so the cluster is not safe.
func (h *harness) primariesServe(ctx context.Context, cv *clusterView) string {
	infos := map[string][]partInfo{}
	for _, p := range h.running() {
		var pi []partInfo
		if err := getJSON(ctx, p.httpURL+"/v1/partitions", &pi); err != nil {
			return err.Error()
		}
		infos[p.name] = pi
	}
	return notServing(cv, infos)
}

// notServing describes the partitions of cv whose primary's replica (in
// infos, by member) is not in the primary role, or "".
func notServing(cv *clusterView, infos map[string][]partInfo) string {
	var bad []string
	for id, part := range cv.Partitions {
		role := "absent"
		if pi := infos[part.Primary]; id < len(pi) {
			role = pi[id].Role
		}
		if role != "primary" {
			bad = append(bad, fmt.Sprintf("%d (%s is %s)", id, part.Primary, role))
		}
	}
	if len(bad) == 0 {
		return ""
	}
	return fmt.Sprintf("table %d: %d partitions' primary does not serve as primary: %s",
		cv.Version, len(bad), strings.Join(bad[:min(5, len(bad))], ", "))
}

// waitSafe waits until the cluster is safe (see unsafe). A safe cluster
// lists no previous incarnation of anything: amnesia is over.
func (h *harness) waitSafe(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	why := ""
	for time.Now().Before(deadline) {
		if why = h.unsafe(ctx); why == "" {
			h.safeAt = append(h.safeAt, h.now())
			clear(h.amnesiac)
			clear(h.restartedAt)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if dir := h.dumpViews(ctx); dir != "" {
		why += " (every node's /v1/cluster in " + dir + ")"
	}
	return errors.New(why)
}

// dumpViews writes every running, unpaused node's /v1/cluster (leader,
// voters, members with their status, table) to a directory under -out
// named by the harness time, so that a cluster that did not become safe
// can be read as it was; it returns the directory ("" if none).
func (h *harness) dumpViews(ctx context.Context) string {
	dir := filepath.Join(h.cfg.Out, fmt.Sprintf("views-%.1fs", sec(h.now())))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		h.logf("views: %v", err)
		return ""
	}
	for _, p := range h.running() {
		if p.paused {
			continue
		}
		b, err := getBody(ctx, p.httpURL+"/v1/cluster")
		if err != nil {
			b = []byte(err.Error() + "\n")
		}
		if err := os.WriteFile(filepath.Join(dir, p.name+".json"), b, 0o644); err != nil {
			h.logf("views: %v", err)
		}
	}
	return dir
}

// wouldLose says why killing victims could lose acknowledged data by
// design (some partition's only valid copies are on them), or "". A valid
// copy is a primary or in-sync backup on a running (possibly paused) member
// that is not amnesiac. Rule 1 of the design promises nothing for such a
// kill, so the nemesis never fires it; a loss after a kill it allowed is a
// defect.
func (h *harness) wouldLose(cv *clusterView, victims ...string) string {
	for id, part := range cv.Partitions {
		holders := 0
		others := 0
		for _, name := range append([]string{part.Primary}, part.Backups...) {
			p := h.byName(name)
			if p == nil || !p.running || h.amnesiac[name] {
				continue
			}
			holders++
			if !slices.Contains(victims, name) {
				others++
			}
		}
		if holders > 0 && others == 0 {
			return fmt.Sprintf("partition %d has its only valid copies on %v (%+v)", id, victims, part)
		}
	}
	return ""
}

// safeVictim returns a candidate whose kill loses nothing by design,
// waiting (up to d) for the cluster to re-replicate if none is; nil if
// none became safe.
func (h *harness) safeVictim(ctx context.Context, candidates []*proc, d time.Duration) *proc {
	deadline := time.Now().Add(d)
	for {
		if cv, err := h.latest(ctx); err == nil {
			for _, p := range candidates {
				if p.running && !p.paused && h.wouldLose(cv, p.name) == "" {
					return p
				}
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}
