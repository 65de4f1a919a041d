// Command stream uploads every image of a folder over one StreamDetectObjects call (per image a
// header, 1 MiB chunks and an end marker; upload.proto) and prints each image's line as its
// result arrives, decoding the image's own google.rpc.Status.
package main

import (
	"io"
	"strconv"

	"google.golang.org/grpc/codes"

	"vision-grpc/clients/go/caller"
	visionv1 "vision-grpc/gen/go/vision/v1"
)

// chunkBytes keeps each message well under the server's 4 MiB message limit.
const chunkBytes = 1 << 20

func main() {
	options, images, conn := caller.Start("stream: every image of a folder over one StreamDetectObjects call")
	defer conn.Close()
	ctx, cancel := options.Context()
	defer cancel()
	var report caller.Report
	stream, err := visionv1.NewDetectionServiceClient(conn).StreamDetectObjects(ctx)
	if err != nil { // no stream: every image failed with it
		for _, image := range images {
			report.Failed(image.Name, caller.OfError(err))
		}
		report.Exit()
	}
	go send(stream, images)

	pending := map[string]string{} // request id → file name
	for i, image := range images {
		pending[strconv.Itoa(i)] = image.Name
	}
	for {
		response, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil { // the stream itself failed: every image still without a result did
			for _, name := range pending {
				report.Failed(name, caller.OfError(err))
			}
			report.Exit()
		}
		name := pending[response.GetRequestId()]
		delete(pending, response.GetRequestId())
		if failure := caller.OfStatus(response.GetStatus()); failure.Code != codes.OK {
			report.Failed(name, failure)
		} else {
			report.OK(name)
		}
	}
	for _, name := range pending {
		report.Failed(name, caller.Failure{Code: codes.Unknown, Reason: "NO_RESULT"})
	}
	report.Exit()
}

// send writes the upload messages of every image, then half-closes the stream.
func send(stream visionv1.DetectionService_StreamDetectObjectsClient, images []caller.Image) {
	for i, image := range images {
		messages := []*visionv1.StreamDetectObjectsRequest{{Kind: &visionv1.StreamDetectObjectsRequest_Header{
			Header: &visionv1.UploadHeader{
				RequestId: strconv.Itoa(i), SizeBytes: int64(len(image.Content)),
				Options: &visionv1.UploadHeader_Detection{Detection: &visionv1.DetectionOptions{}},
			},
		}}}
		for start := 0; start < len(image.Content); start += chunkBytes {
			end := start + chunkBytes
			if end > len(image.Content) {
				end = len(image.Content)
			}
			messages = append(messages, &visionv1.StreamDetectObjectsRequest{
				Kind: &visionv1.StreamDetectObjectsRequest_Chunk{
					Chunk: &visionv1.ImageChunk{Data: image.Content[start:end]}}})
		}
		messages = append(messages, &visionv1.StreamDetectObjectsRequest{
			Kind: &visionv1.StreamDetectObjectsRequest_End{End: &visionv1.UploadEnd{}}})
		for _, message := range messages {
			if stream.Send(message) != nil {
				return // the stream failed: Recv reports why
			}
		}
	}
	_ = stream.CloseSend()
}
