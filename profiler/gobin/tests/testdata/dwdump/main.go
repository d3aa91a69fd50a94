// dwdump: an independent oracle for gomemtrace-gobin's tests, built on Go's own
// debug/dwarf and debug/elf. For one Go binary it prints, one per line:
//
//	field 0x98 runtime.g.goid          (byte offset of a member, nested members joined by '.')
//	rtype 0x1a2b0 main.Small           (DW_AT_go_runtime_type: type descriptor offset from md.types)
//	sym 0x4a0000 runtime.types         (address of a .symtab symbol)
//
// With -all, every DWARF entry that has a DW_AT_go_runtime_type is printed as rtype (the
// first entry per name). Names may contain spaces, so they come last.
//
// Usage: dwdump [-all] BINARY
package main

import (
	"debug/dwarf"
	"debug/elf"
	"fmt"
	"os"
	"sort"
	"strings"
)

const attrGoRuntimeType = dwarf.Attr(0x2904)

var structs = map[string][]string{
	"runtime.g":     {"goid", "m", "startpc", "gopc", "stack.lo", "stack.hi", "atomicstatus"},
	"runtime.m":     {"curg"},
	"runtime.stack": {"lo", "hi"},
	// The allocation counters (allocstats).
	"runtime.mstats":              {"heapStats"},
	"runtime.consistentHeapStats": {"stats", "gen"},
	"runtime.heapStatsDelta": {"tinyAllocCount", "largeAlloc", "largeAllocCount", "smallAllocCount",
		"largeFree", "largeFreeCount", "smallFreeCount"},
	"runtime.p":      {"mcache"},
	"runtime.mcache": {"tinyAllocs", "alloc"},
	"runtime.mspan":  {"allocCount", "allocCountBeforeCache"},
}

// Structs whose byte size is printed ("size 0x498 runtime.heapStatsDelta").
var sizes = map[string]bool{"runtime.heapStatsDelta": true}

// Data symbols whose address is printed.
var symbols = map[string]bool{
	"runtime.types": true, "runtime.etypes": true, "runtime.memstats": true, "runtime.allp": true,
}

var rtypes = map[string]bool{
	"main.Small":    true,
	"*main.Small":   true,
	"main.NoPtr":    true,
	"[]uint8":       true,
	"runtime.g":     true,
	"*runtime.g":    true,
	"string":        true,
	"[]*main.Small": true,
}

func main() {
	all := len(os.Args) > 2 && os.Args[1] == "-all"
	f, err := elf.Open(os.Args[len(os.Args)-1])
	if err != nil {
		fail(err)
	}
	d, err := f.DWARF()
	if err != nil {
		fail(err)
	}
	var out []string
	seen := map[string]bool{}
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil {
			fail(err)
		}
		if e == nil {
			break
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		if off, ok := e.Val(attrGoRuntimeType).(uint64); ok && off != 0 && (rtypes[name] || all && !seen[name]) {
			out = append(out, fmt.Sprintf("rtype %#x %s", off, name))
			delete(rtypes, name)
			seen[name] = true
		}
		if e.Tag == dwarf.TagStructType {
			if fields, ok := structs[name]; ok {
				t, err := d.Type(e.Offset)
				if err != nil {
					fail(err)
				}
				st := t.(*dwarf.StructType)
				if sizes[name] {
					out = append(out, fmt.Sprintf("size %#x %s", st.ByteSize, name))
				}
				for _, fld := range fields {
					off, ok := memberOffset(st, fld)
					if !ok {
						fail(fmt.Errorf("%s has no member %s", name, fld))
					}
					out = append(out, fmt.Sprintf("field %#x %s.%s", off, name, fld))
				}
				delete(structs, name)
			}
		}
		if e.Tag != dwarf.TagCompileUnit && e.Children {
			// Types live at the top level of each unit; don't walk function bodies.
			r.SkipChildren()
		}
	}
	syms, err := f.Symbols()
	if err != nil {
		fail(err)
	}
	for _, s := range syms {
		if symbols[s.Name] {
			out = append(out, fmt.Sprintf("sym %#x %s", s.Value, s.Name))
		}
	}
	sort.Strings(out)
	fmt.Println(strings.Join(out, "\n"))
}

func memberOffset(st *dwarf.StructType, path string) (int64, bool) {
	head, rest, nested := strings.Cut(path, ".")
	for _, f := range st.Field {
		if f.Name != head {
			continue
		}
		if !nested {
			return f.ByteOffset, true
		}
		t := f.Type
		for {
			td, ok := t.(*dwarf.TypedefType)
			if !ok {
				break
			}
			t = td.Type
		}
		inner, ok := t.(*dwarf.StructType)
		if !ok {
			return 0, false
		}
		off, ok := memberOffset(inner, rest)
		return f.ByteOffset + off, ok
	}
	return 0, false
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "dwdump:", err)
	os.Exit(1)
}
