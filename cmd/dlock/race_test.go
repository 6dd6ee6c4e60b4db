//go:build race

package main

// raceEnabled builds the dlock binary under test with the race detector too.
const raceEnabled = true
