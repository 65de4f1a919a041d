package caller

import (
	"fmt"
	"os"
	"strings"
	"time"

	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	// Importing errdetails registers ErrorInfo, BadRequest, RetryInfo, ...: without it every
	// detail of a status decodes to the error "proto: not found".
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// Failure is what a google.rpc.Status says: its code, ErrorInfo's reason, BadRequest's field
// violations, RetryInfo's delay.
type Failure struct {
	Code       codes.Code
	Reason     string
	Fields     []string
	RetryDelay time.Duration
}

// OfError decodes a failed call's status (gRPC's grpc-status-details-bin trailer).
func OfError(err error) Failure {
	return Describe(status.Convert(err))
}

// OfStatus decodes a streamed item's own status, an ordinary google.rpc.Status field.
func OfStatus(item *rpcstatus.Status) Failure {
	return Describe(status.FromProto(item))
}

// Describe reads a status's details.
func Describe(s *status.Status) Failure {
	failure := Failure{Code: s.Code()}
	for _, detail := range s.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			failure.Reason = d.GetReason()
		case *errdetails.BadRequest:
			for _, violation := range d.GetFieldViolations() {
				failure.Fields = append(failure.Fields, violation.GetField())
			}
		case *errdetails.RetryInfo:
			failure.RetryDelay = d.GetRetryDelay().AsDuration()
		case error:
			fmt.Fprintln(os.Stderr, "undecodable status detail:", d)
		}
	}
	return failure
}

// String is "<CODE> <REASON> <field>[,<field>...]", "-" for a missing part, then
// " retry-after=<delay>" when the server sent RetryInfo.
func (f Failure) String() string {
	reason, fields := f.Reason, strings.Join(f.Fields, ",")
	if reason == "" {
		reason = "-"
	}
	if fields == "" {
		fields = "-"
	}
	line := fmt.Sprintf("%s %s %s", codeNames[f.Code], reason, fields)
	if f.RetryDelay > 0 {
		line += " retry-after=" + f.RetryDelay.String()
	}
	return line
}

// codeNames are the canonical names (INVALID_ARGUMENT); Go's String() says InvalidArgument.
var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
	codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
	codes.Unauthenticated: "UNAUTHENTICATED",
}

// imageErrors are the documented answers to a bad image (README, "The API"): an example that
// meets one still succeeds.
var imageErrors = map[string]bool{
	"EMPTY_IMAGE": true, "INVALID_IMAGE": true, "IMAGE_TRUNCATED": true,
	"UNSUPPORTED_IMAGE_FORMAT": true, "IMAGE_DECODE_FAILED": true, "IMAGE_TOO_LARGE": true,
	"IMAGE_TOO_COMPLEX": true,
}

// Documented tells whether the failure is the server's documented answer to a bad image.
func (f Failure) Documented() bool {
	return f.Code == codes.InvalidArgument && imageErrors[f.Reason]
}

// Report prints one line per image and gives the exit status: 0 when every image was OK or met
// a documented error, 1 otherwise.
type Report struct {
	undocumented int
}

// OK prints "<name> OK".
func (r *Report) OK(name string) {
	fmt.Printf("%s OK\n", name)
}

// Failed prints "<name> <CODE> <REASON> <field>".
func (r *Report) Failed(name string, failure Failure) {
	fmt.Printf("%s %s\n", name, failure)
	if !failure.Documented() {
		r.undocumented++
	}
}

// Call reports a unary call's outcome.
func (r *Report) Call(name string, err error) {
	if err == nil {
		r.OK(name)
	} else {
		r.Failed(name, OfError(err))
	}
}

// Exit ends the example with its status.
func (r *Report) Exit() {
	if r.undocumented > 0 {
		os.Exit(1)
	}
	os.Exit(0)
}
