package main

import (
	"io"
	"os"
	"testing"

	"github.com/collocate/grid/grid"
)

func TestParsePrecedence(t *testing.T) {
	env := map[string]string{"GRID_JOIN": "10.0.0.1:7946", "GRID_BACKUPS": "2", "GRID_NAME": "from-env"}
	o, err := parse([]string{"-name", "from-flag"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg := o.cfg
	if cfg.Name != "from-flag" || cfg.Backups != 2 || len(cfg.Seeds) != 1 || cfg.Seeds[0] != "10.0.0.1:7946" {
		t.Fatalf("cfg %+v", cfg)
	}
}

func TestParseRejectsBadInput(t *testing.T) {
	none := func(string) string { return "" }
	for _, args := range [][]string{
		{"-partitions", "0"},
		{"-backups", "-1"},
		{"-rpc", "nonsense"},
		{"-profile", "fast"},
		{"-nosuchflag"},
		{"stray"},
		{"-log-level", "loud"},
		{"-journal-records", "0"},
		{"-journal-bytes", "-1"},
	} {
		if _, err := parse(args, none, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	if _, err := parse(nil, func(k string) string {
		if k == "GRID_PARTITIONS" {
			return "many"
		}
		return ""
	}, io.Discard); err == nil {
		t.Error("bad GRID_PARTITIONS accepted")
	}
}

func TestParseJournalBounds(t *testing.T) {
	none := func(string) string { return "" }
	o, err := parse(nil, none, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.JournalRecords != grid.DefaultJournalRecords || o.cfg.JournalBytes != grid.DefaultJournalBytes {
		t.Fatalf("defaults: journal %d records, %d bytes", o.cfg.JournalRecords, o.cfg.JournalBytes)
	}
	o, err = parse([]string{"-journal-records", "1", "-journal-bytes", "4096"}, none, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.JournalRecords != 1 || o.cfg.JournalBytes != 4096 {
		t.Fatalf("journal %d records, %d bytes; want 1, 4096", o.cfg.JournalRecords, o.cfg.JournalBytes)
	}
}

func TestRunExitsNonZeroOnBadFlags(t *testing.T) {
	if code := run([]string{"-backups", "x"}, io.Discard); code == 0 {
		t.Fatal("bad flag exited 0")
	}
}

func TestConfigFilePrecedence(t *testing.T) {
	path := t.TempDir() + "/grid.yaml"
	data := "name: from-file\nbackups: 2\njoin: [\"10.0.0.1:7946\", \"10.0.0.2:7946\"]\npartitions: 64\nprofile: test\n"
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"GRID_BACKUPS": "3"}
	o, err := parse([]string{"-config", path, "-partitions", "32"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if c.Name != "from-file" || c.Backups != 3 || c.Partitions != 32 || len(c.Seeds) != 2 || c.Profile != "test" {
		t.Fatalf("file < env < flag not honoured: %+v", c)
	}
	if err := os.WriteFile(path, []byte("nosuchkey: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := parse([]string{"-config", path}, func(string) string { return "" }, io.Discard); err == nil {
		t.Fatal("unknown key accepted")
	}
	if _, err := parse([]string{"-config", path + ".missing"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestParseResp(t *testing.T) {
	env := map[string]string{"GRID_RESP": "127.0.0.1:6379", "GRID_RESP_MAP": "cache"}
	o, err := parse(nil, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.resp != "127.0.0.1:6379" || o.respMap != "cache" {
		t.Fatalf("GRID_RESP: %q %q", o.resp, o.respMap)
	}
	if o, err = parse(nil, func(string) string { return "" }, io.Discard); err != nil || o.resp != "" || o.respMap != "db0" {
		t.Fatalf("default: RESP must be off on db0: %q %q %v", o.resp, o.respMap, err)
	}
	for _, args := range [][]string{{"-resp", "nonsense"}, {"-resp", "127.0.0.1:6379", "-resp-map", ""}} {
		if _, err := parse(args, func(string) string { return "" }, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
