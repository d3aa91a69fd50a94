// The program whose builds (each Go release, stripped or not, PIE) the fuzz targets'
// seeds are cut from (cargo xtask fuzz-seeds): small, so that its parts fuzz fast, with
// a goroutine, a heap allocation and a type descriptor of its own.
package main

import "os"

type node struct {
	next    *node
	payload [48]byte
}

func main() {
	done := make(chan *node)
	go func() { done <- &node{} }()
	n := <-done
	buf := make([]byte, 1<<16)
	os.Stdout.Write(buf[:len(n.payload)&0])
}
