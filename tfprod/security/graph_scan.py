"""Scan a SavedModel's graph for the ops it can run, before the model is loaded.

A SavedModel is a program, not data (TensorFlow's SECURITY.md says as much): its graph may read and
write files, talk to the network or run Python code, both while it loads (the init op, the
resources' initializers) and on every request (the signatures). This module lists the op types
reachable from the serving signatures and from everything the loader runs, and reports those that
are not on an allowlist of ops that only compute on tensors. It is an allowlist, not a blocklist:
an op it does not know fails closed, and the operator can allow more ops per model.

    meta_graph = read_meta_graph(path, frozenset({"serve"}))
    findings = scan(meta_graph, allow=model_config_allowed_ops)
    if findings:
        refuse(describe(findings))

Only the MetaGraphDef is read; nothing is loaded or run. The saver's restore op is scanned too
(TF1 models run it while loading), where the checkpoint restore ops themselves (RestoreV2, ...)
are allowed; the save path (SaveV2, ...) never runs in a server and is not scanned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence

from google.protobuf import message
from tensorflow.core.framework import attr_value_pb2, function_pb2, node_def_pb2, variable_pb2
from tensorflow.core.protobuf import meta_graph_pb2

INIT_ROOT = "init op"
RESTORE_ROOT = "restore op"
RESTORE_OPS = frozenset({"RestoreV2", "Restore", "RestoreSlice"})  # allowed from RESTORE_ROOT only
INIT_OP_SIGNATURE = "__saved_model_init_op"
INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op", "table_initializer")

FILES = "reads or writes files"
NETWORK = "network access"
PYTHON = "runs Python code"
ABORT = "ends the server process"
NOT_ALLOWED = "not in the allowlist"


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


ALLOWED_OPS: frozenset[str] = frozenset().union(
    # Graph plumbing, functions and control flow (TF2 functional and TF1 frame-based).
    _names("""
        Const HostConst Placeholder PlaceholderV2 PlaceholderWithDefault Identity IdentityN NoOp
        PartitionedCall StatefulPartitionedCall If StatelessIf _If While StatelessWhile _While For
        Case StatelessCase Switch Merge Enter Exit NextIteration LoopCond ControlTrigger
        RefSwitch RefMerge RefEnter RefExit RefNextIteration RefIdentity RefSelect
        BatchFunction Snapshot GuaranteeConst DeepCopy StopGradient PreventGradient
        Assert CheckNumerics CheckNumericsV2 EnsureShape Print PrintV2 StringFormat Timestamp
    """),
    # Variables and other resources held in memory.
    _names("""
        VarHandleOp ReadVariableOp AssignVariableOp AssignAddVariableOp AssignSubVariableOp
        VarIsInitializedOp VariableShape DestroyResourceOp DisableCopyOnRead
        Variable VariableV2 Assign AssignAdd AssignSub IsVariableInitialized
        TemporaryVariable DestroyTemporaryVariable CountUpTo ResourceCountUpTo
        ResourceGather ResourceGatherNd ResourceScatterAdd ResourceScatterSub ResourceScatterMul
        ResourceScatterDiv ResourceScatterMin ResourceScatterMax ResourceScatterUpdate
        ResourceScatterNdAdd ResourceScatterNdSub ResourceScatterNdUpdate ResourceScatterNdMin
        ResourceScatterNdMax ResourceStridedSliceAssign
        ScatterAdd ScatterSub ScatterMul ScatterDiv ScatterMin ScatterMax ScatterUpdate
        ScatterNdAdd ScatterNdSub ScatterNdUpdate ScatterNdMin ScatterNdMax ScatterNdNonAliasingAdd
        StridedSliceAssign MutexV2 MutexLock ConsumeMutexLock
    """),
    # Lookup tables built and filled in the graph (not from files).
    _names("""
        HashTable HashTableV2 MutableHashTable MutableHashTableV2 MutableHashTableOfTensors
        MutableHashTableOfTensorsV2 MutableDenseHashTable MutableDenseHashTableV2 AnonymousHashTable
        AnonymousMutableHashTable AnonymousMutableHashTableOfTensors AnonymousMutableDenseHashTable
        InitializeTable InitializeTableV2 LookupTableFind LookupTableFindV2 LookupTableInsert
        LookupTableInsertV2 LookupTableRemoveV2 LookupTableImport LookupTableImportV2 LookupTableExport
        LookupTableExportV2 LookupTableSize LookupTableSizeV2
    """),
    # Element-wise math, comparisons, reductions, products and scans.
    _names("""
        Abs Acos Acosh Add AddV2 AddN AccumulateNV2 Angle Asin Asinh Atan Atan2 Atanh Ceil Complex
        ComplexAbs Conj Cos Cosh Digamma Div DivNoNan Erf Erfc Erfinv Exp Expm1 Floor FloorDiv FloorMod
        Igamma Igammac Imag Inv Lgamma Log Log1p Maximum Minimum Mod Mul MulNoNan Ndtri Neg NextAfter
        Polygamma Pow Real RealDiv Reciprocal Rint Round Rsqrt Sigmoid Sign Sin Sinh Sqrt Square
        SquaredDifference Sub Tan Tanh TruncateDiv TruncateMod Xdivy Xlog1py Xlogy Zeta Betainc
        BesselI0 BesselI0e BesselI1 BesselI1e BesselJ0 BesselJ1 BesselK0 BesselK0e BesselK1 BesselK1e
        BesselY0 BesselY1 Dawsn Expint FresnelCos FresnelSin Spence
        Equal NotEqual Greater GreaterEqual Less LessEqual ApproximateEqual IsFinite IsInf IsNan
        LogicalAnd LogicalOr LogicalNot BitwiseAnd BitwiseOr BitwiseXor Invert LeftShift RightShift
        PopulationCount Cast Bitcast ClipByValue Select SelectV2
        All Any Sum Prod Max Min Mean EuclideanNorm ArgMax ArgMin Cumsum Cumprod CumulativeLogsumexp
        MatMul SparseMatMul BatchMatMul BatchMatMulV2 BatchMatMulV3 Einsum Cross
        Bincount DenseBincount SparseBincount RaggedBincount Bucketize HistogramFixedWidth
        DenseCountSparseOutput SparseCountSparseOutput RaggedCountSparseOutput
        SegmentSum SegmentSumV2 SegmentMean SegmentProd SegmentProdV2 SegmentMin SegmentMinV2
        SegmentMax SegmentMaxV2 UnsortedSegmentSum UnsortedSegmentProd UnsortedSegmentMin
        UnsortedSegmentMax SparseSegmentSum SparseSegmentMean SparseSegmentSqrtN
        SparseSegmentSumWithNumSegments SparseSegmentMeanWithNumSegments SparseSegmentSqrtNWithNumSegments
        LowerBound UpperBound Range LinSpace
    """),
    # Linear algebra and FFT.
    _names("""
        Cholesky MatrixInverse MatrixDeterminant LogMatrixDeterminant MatrixSolve MatrixSolveLs
        MatrixTriangularSolve BandedTriangularSolve MatrixExponential MatrixLogarithm MatrixSquareRoot
        Qr Svd Eig SelfAdjointEig SelfAdjointEigV2 Lu TridiagonalMatMul TridiagonalSolve
        MatrixBandPart MatrixDiag MatrixDiagV2 MatrixDiagV3 MatrixDiagPart MatrixDiagPartV2
        MatrixDiagPartV3 MatrixSetDiag MatrixSetDiagV2 MatrixSetDiagV3 Diag DiagPart
        FFT FFT2D FFT3D FFTND IFFT IFFT2D IFFT3D IFFTND RFFT RFFT2D RFFT3D RFFTND IRFFT IRFFT2D IRFFT3D
        IRFFTND
    """),
    # Shapes, slicing, gathering, scattering and other array manipulation.
    _names("""
        Reshape Transpose ConjugateTranspose Concat ConcatV2 ConcatOffset Pack Unpack Split SplitV
        Gather GatherV2 GatherNd StridedSlice TensorStridedSliceUpdate Slice Pad PadV2 MirrorPad Tile
        Fill ExpandDims Squeeze Shape ShapeN Size Rank Where OneHot ZerosLike OnesLike BroadcastTo
        BroadcastArgs BroadcastGradientArgs Reverse ReverseV2 ReverseSequence Roll InvertPermutation
        Unique UniqueV2 UniqueWithCounts UniqueWithCountsV2 ListDiff SetSize DenseToDenseSetOperation
        DenseToSparseSetOperation SparseToSparseSetOperation ScatterNd TensorScatterUpdate TensorScatterAdd
        TensorScatterSub TensorScatterMin TensorScatterMax DynamicPartition DynamicStitch
        ParallelDynamicStitch InplaceUpdate InplaceAdd InplaceSub UnravelIndex EditDistance TopKV2 TopK
        NthElement InTopK InTopKV2 SpaceToBatch SpaceToBatchND BatchToSpace BatchToSpaceND SpaceToDepth
        DepthToSpace DataFormatDimMap DataFormatVecPermute ExtractImagePatches ExtractVolumePatches
    """),
    # Neural network layers and activations.
    _names("""
        Conv Conv2D Conv3D Conv2DBackpropInput Conv3DBackpropInputV2 DepthwiseConv2dNative
        DepthwiseConv2dNativeBackpropInput Dilation2D AvgPool AvgPool3D MaxPool MaxPoolV2 MaxPool3D
        MaxPoolWithArgmax FractionalAvgPool FractionalMaxPool BiasAdd BiasAddV1 Relu Relu6 Elu Selu
        LeakyRelu Softplus Softsign Softmax LogSoftmax FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3
        BatchNormWithGlobalNormalization LRN L2Loss SoftmaxCrossEntropyWithLogits
        SparseSoftmaxCrossEntropyWithLogits CTCGreedyDecoder CTCBeamSearchDecoder CTCLoss CTCLossV2
        LSTMBlockCell GRUBlockCell BlockLSTM BlockLSTMV2 CudnnRNN CudnnRNNV2 CudnnRNNV3
        CudnnRNNParamsSize CudnnRNNCanonicalToParams CudnnRNNCanonicalToParamsV2
        QuantizeAndDequantize QuantizeAndDequantizeV2 QuantizeAndDequantizeV3 QuantizeAndDequantizeV4
        FakeQuantWithMinMaxArgs FakeQuantWithMinMaxVars FakeQuantWithMinMaxVarsPerChannel QuantizeV2
        Dequantize
    """),
    # Sparse and ragged tensors, composite-tensor plumbing, tensor lists, arrays and maps.
    _names("""
        SparseToDense SparseTensorDenseMatMul SparseTensorDenseAdd SparseReshape SparseFillEmptyRows
        SparseReorder SparseSlice SparseConcat SparseAdd SparseSplit SparseReduceSum SparseReduceSumSparse
        SparseReduceMax SparseReduceMaxSparse SparseSoftmax SparseDenseCwiseAdd SparseDenseCwiseMul
        SparseDenseCwiseDiv SparseSparseMaximum SparseSparseMinimum SparseCross SparseCrossHashed
        SparseCrossV2 SerializeSparse SerializeManySparse DeserializeSparse DeserializeManySparse
        RaggedTensorToTensor RaggedTensorToSparse RaggedTensorToVariant RaggedTensorFromVariant
        RaggedGather RaggedRange RaggedCross RaggedFillEmptyRows
        CompositeTensorVariantFromComponents CompositeTensorVariantToComponents
        OptionalFromValue OptionalGetValue OptionalHasValue OptionalNone
        EmptyTensorList TensorListReserve TensorListFromTensor TensorListStack TensorListGetItem
        TensorListSetItem TensorListPushBack TensorListPushBackBatch TensorListPopBack TensorListLength
        TensorListElementShape TensorListGather TensorListScatter TensorListScatterV2
        TensorListScatterIntoExistingList TensorListConcat TensorListConcatV2 TensorListConcatLists
        TensorListSplit TensorListResize
        TensorArrayV3 TensorArrayReadV3 TensorArrayWriteV3 TensorArrayGatherV3 TensorArrayScatterV3
        TensorArrayConcatV3 TensorArraySplitV3 TensorArraySizeV3 TensorArrayCloseV3 TensorArrayGradV3
        TensorArrayGradWithShape TensorArrayV2 TensorArrayReadV2 TensorArrayWriteV2 TensorArrayGatherV2
        TensorArrayScatterV2 TensorArrayConcatV2 TensorArraySplitV2 TensorArraySizeV2 TensorArrayCloseV2
        TensorArrayGradV2
        EmptyTensorMap TensorMapInsert TensorMapLookup TensorMapErase TensorMapHasKey TensorMapSize
        TensorMapStackKeys
        StackV2 StackPushV2 StackPopV2 StackCloseV2
    """),
    # Strings (in memory; regular expressions are RE2).
    _names("""
        StringJoin StringSplit StringSplitV2 StringStrip StringLength StringLower StringUpper Substr
        StringNGrams ReduceJoin UnsortedSegmentJoin RegexReplace StaticRegexReplace RegexFullMatch
        StaticRegexFullMatch StringToHashBucket StringToHashBucketFast StringToHashBucketStrong
        Fingerprint AsString StringToNumber DecodeBase64 EncodeBase64 UnicodeDecode
        UnicodeDecodeWithOffsets UnicodeEncode UnicodeScript UnicodeTranscode
    """),
    # Parsing and encoding of in-memory bytes: tf.Example, tensors, CSV, images, audio.
    _names("""
        ParseExample ParseExampleV2 ParseSingleExample ParseSequenceExample ParseSequenceExampleV2
        ParseSingleSequenceExample ParseTensor SerializeTensor DecodeRaw DecodePaddedRaw DecodeCSV
        DecodeJSONExample DecodeCompressed
        DecodeJpeg DecodeAndCropJpeg DecodePng DecodeGif DecodeBmp DecodeWebP DecodeImage
        ExtractJpegShape EncodeJpeg EncodeJpegVariableQuality EncodePng DecodeWav EncodeWav
        AudioSpectrogram Mfcc
    """),
    # Images.
    _names("""
        ResizeBilinear ResizeNearestNeighbor ResizeBicubic ResizeArea ScaleAndTranslate CropAndResize
        AdjustContrast AdjustContrastv2 AdjustHue AdjustSaturation RGBToHSV HSVToRGB
        DrawBoundingBoxes DrawBoundingBoxesV2 NonMaxSuppression NonMaxSuppressionV2 NonMaxSuppressionV3
        NonMaxSuppressionV4 NonMaxSuppressionV5 NonMaxSuppressionWithOverlaps CombinedNonMaxSuppression
        ImageProjectiveTransformV2 ImageProjectiveTransformV3 ExtractGlimpse ExtractGlimpseV2
        SampleDistortedBoundingBox SampleDistortedBoundingBoxV2 StatelessSampleDistortedBoundingBox
        GenerateBoundingBoxProposals
    """),
    # Random numbers, stateful and stateless.
    _names("""
        RandomUniform RandomUniformInt RandomStandardNormal TruncatedNormal ParameterizedTruncatedNormal
        RandomGamma RandomPoisson RandomPoissonV2 RandomShuffle RandomCrop Multinomial
        NonDeterministicInts RngSkip RngReadAndSkip
        StatefulUniform StatefulUniformInt StatefulUniformFullInt StatefulStandardNormal
        StatefulStandardNormalV2 StatefulTruncatedNormal StatefulRandomBinomial
        StatelessRandomUniform StatelessRandomUniformInt StatelessRandomUniformFullInt
        StatelessRandomNormal StatelessTruncatedNormal StatelessMultinomial
        StatelessParameterizedTruncatedNormal StatelessRandomBinomial StatelessRandomGammaV2
        StatelessRandomGammaV3 StatelessRandomPoisson StatelessRandomUniformV2 StatelessRandomUniformIntV2
        StatelessRandomUniformFullIntV2 StatelessRandomNormalV2 StatelessTruncatedNormalV2
        StatelessRandomGetKeyCounter StatelessRandomGetAlg StatelessRandomGetKeyCounterAlg
        StatelessShuffle RandomIndexShuffle
        UniformCandidateSampler LogUniformCandidateSampler LearnedUnigramCandidateSampler
        AllCandidateSampler ThreadUnsafeUnigramCandidateSampler ComputeAccidentalHits
    """),
)

_DANGEROUS: dict[str, frozenset[str]] = {
    FILES: _names("""
        ReadFile WriteFile MatchingFiles FileSystemSetConfiguration ImmutableConst
        InitializeTableFromTextFile InitializeTableFromTextFileV2
        WholeFileReader WholeFileReaderV2 TextLineReader TextLineReaderV2 TFRecordReader TFRecordReaderV2
        FixedLengthRecordReader FixedLengthRecordReaderV2 LMDBReader IdentityReader IdentityReaderV2
        ReaderRead ReaderReadV2 ReaderReadUpTo ReaderReadUpToV2 ReaderRestoreState ReaderRestoreStateV2
        TFRecordDataset TFRecordDatasetV2 TextLineDataset FixedLengthRecordDataset FixedLengthRecordDatasetV2
        CSVDataset CSVDatasetV2 ExperimentalCSVDataset LMDBDataset ExperimentalLMDBDataset SqlDataset
        ExperimentalSqlDataset MatchingFilesDataset ExperimentalMatchingFilesDataset DatasetToTFRecord
        ExperimentalDatasetToTFRecord SaveDataset SaveDatasetV2 LoadDataset SnapshotDataset SnapshotDatasetV2
        SnapshotDatasetReader SnapshotNestedDatasetReader SnapshotChunkDataset ListSnapshotChunksDataset
        DistributedSave CacheDataset CacheDatasetV2 RecordInput Skipgram
        Save SaveV2 SaveSlices Restore RestoreV2 RestoreSlice MergeV2Checkpoints DTensorRestoreV2
        LoadAndRemapMatrix GenerateVocabRemapping CalibrationStatisticsSaver
        SummaryWriter CreateSummaryFileWriter CreateSummaryDbWriter WriteSummary WriteScalarSummary
        WriteHistogramSummary WriteImageSummary WriteAudioSummary WriteGraphSummary WriteRawProtoSummary
        ImportEvent FlushSummaryWriter CloseSummaryWriter StatsAggregatorSetSummaryWriter
        DebugIdentity DebugIdentityV2 DebugIdentityV3 DebugNanCount DebugNumericSummary
        DebugNumericSummaryV2 DumpTensor
    """),
    NETWORK: _names("""
        RpcServer RpcServerStart RpcServerRegister RpcClient RpcCall RpcCheckStatus RpcGetValue
        DeleteRpcFutureResource DataServiceDataset DataServiceDatasetV2 DataServiceDatasetV3
        DataServiceDatasetV4 RegisterDataset RegisterDatasetV2 RemoteCall WorkerHeartbeat
        Send Recv _Send _Recv _HostSend _HostRecv
        CollectiveAllToAllV2 CollectiveAllToAllV3 CollectiveAssignGroupV2 CollectiveBcastRecv
        CollectiveBcastRecvV2 CollectiveBcastSend CollectiveBcastSendV2 CollectiveGather CollectiveGatherV2
        CollectiveInitializeCommunicator CollectivePermute CollectiveReduce CollectiveReduceScatterV2
        CollectiveReduceV2 CollectiveReduceV3
    """),
    PYTHON: _names("PyFunc PyFuncStateless EagerPyFunc"),
    ABORT: _names("Abort"),
}

DANGEROUS_OPS: Mapping[str, str] = {op: reason for reason, ops in _DANGEROUS.items() for op in ops}


@dataclasses.dataclass(frozen=True, order=True)
class Finding:
    """An op the model can run that is not allowed."""

    op: str  # op type, e.g. "ReadFile"
    root: str  # where it is reachable from: a signature name, or INIT_ROOT
    reason: str  # FILES, NETWORK, PYTHON, ABORT, NOT_ALLOWED, or "writes to a file (PrintV2 ...)"


def reachable_ops(meta_graph: meta_graph_pb2.MetaGraphDef) -> dict[str, set[str]]:
    """Every op type reachable from the signatures and the init op -> the roots it is reachable from."""
    ops: dict[str, set[str]] = {}
    for root, node in _reachable_nodes(meta_graph):
        ops.setdefault(node.op, set()).add(root)
    return ops


def scan(meta_graph: meta_graph_pb2.MetaGraphDef, allow: Iterable[str] = ()) -> list[Finding]:
    """The reachable ops that are not allowed, sorted; empty when the graph is clean. `allow` names
    extra op types to accept for this model, dangerous ones included."""
    extra = frozenset(allow)
    findings = {Finding(node.op, root, reason) for root, node in _reachable_nodes(meta_graph)
                if node.op not in extra and not (root == RESTORE_ROOT and node.op in RESTORE_OPS)
                and (reason := _reason(node)) is not None}
    return sorted(findings)


def describe(findings: Sequence[Finding]) -> str:
    """One line for an error message: each op, why it is refused, and where it is reachable from
    ("" for no findings). The op names are the ones to allow for the model."""
    roots: dict[tuple[str, str], list[str]] = {}
    for f in sorted(findings):
        where = roots.setdefault((f.op, f.reason), [])
        if f.root not in where:
            where.append(f.root)
    return "; ".join(f"{op} ({reason}) reachable from {', '.join(where)}" for (op, reason), where in roots.items())


def _reason(node: node_def_pb2.NodeDef) -> str | None:
    if node.op == "PrintV2":
        stream = node.attr["output_stream"].s.decode(errors="replace") if "output_stream" in node.attr else ""
        return f"writes to a file (PrintV2 output_stream {stream})" if stream.lower().startswith("file://") else None
    if node.op in DANGEROUS_OPS:
        return DANGEROUS_OPS[node.op]
    return None if node.op in ALLOWED_OPS else NOT_ALLOWED


def _node_name(ref: str) -> str:
    """A graph input or tensor name ("^name", "name", "name:0") -> the node name."""
    return ref.lstrip("^").split(":", 1)[0]


def _func_names(value: attr_value_pb2.AttrValue) -> Iterator[str]:
    """The functions an attr value names, including those named in their own attrs."""
    funcs = [value.func] if value.HasField("func") else list(value.list.func)
    for func in funcs:
        if func.name:
            yield func.name
        for nested in func.attr.values():
            yield from _func_names(nested)


def _tensor_names(info: meta_graph_pb2.TensorInfo) -> Iterator[str]:
    encoding = info.WhichOneof("encoding")
    if encoding == "name":
        yield info.name
    elif encoding == "coo_sparse":
        sparse = info.coo_sparse
        yield from (sparse.values_tensor_name, sparse.indices_tensor_name, sparse.dense_shape_tensor_name)
    elif encoding == "composite_tensor":
        for component in info.composite_tensor.components:
            yield from _tensor_names(component)


@dataclasses.dataclass
class _Root:
    nodes: set[str] = dataclasses.field(default_factory=set)  # graph_def node names
    functions: set[str] = dataclasses.field(default_factory=set)  # library function names


def _roots(meta_graph: meta_graph_pb2.MetaGraphDef) -> dict[str, _Root]:
    """Where execution starts: each signature, and everything the loader runs (INIT_ROOT).

    Besides the signature_def and the init op, a TF2 SavedModel names functions in its object
    graph. The server runs signature_def through a Session, but `tf.saved_model.load` (any other
    TF 2 consumer of the same files: tfprod convert, users' scripts) serves the signatures'
    functions from the object graph and runs each resource's creator and initializer (and restore
    functions of custom saveables) while loading: they are scanned too, so that a version passes the
    scan only if no way of loading it reaches a refused op."""
    roots: dict[str, _Root] = {}
    init = roots.setdefault(INIT_ROOT, _Root())
    for name, sig in meta_graph.signature_def.items():
        root = init if name == INIT_OP_SIGNATURE else roots.setdefault(name, _Root())
        for info in sig.outputs.values():
            root.nodes.update(_node_name(t) for t in _tensor_names(info) if t)
    for key in INIT_COLLECTIONS:
        if key in meta_graph.collection_def:
            init.nodes.update(_node_name(n) for n in meta_graph.collection_def[key].node_list.value)
    if "local_variables" in meta_graph.collection_def:  # TF1's default local init op initializes them
        for raw in meta_graph.collection_def["local_variables"].bytes_list.value:
            variable = variable_pb2.VariableDef()
            try:
                variable.ParseFromString(raw)
            except message.DecodeError:
                continue  # the loader cannot use it either
            if variable.initializer_name:
                init.nodes.add(_node_name(variable.initializer_name))
    if meta_graph.saver_def.restore_op_name:  # the loader runs it to restore variables
        roots.setdefault(RESTORE_ROOT, _Root()).nodes.add(_node_name(meta_graph.saver_def.restore_op_name))

    objects = meta_graph.object_graph_def.nodes

    def functions_of(node_id: int) -> list[str]:
        if not 0 <= node_id < len(objects):
            return []
        obj = objects[node_id]
        kind = obj.WhichOneof("kind")
        if kind == "function":
            return list(obj.function.concrete_functions)
        if kind == "bare_concrete_function":
            return [obj.bare_concrete_function.concrete_function_name]
        return []

    if objects:
        for child in objects[0].children:
            if child.local_name == "signatures" and 0 <= child.node_id < len(objects):
                for sig in objects[child.node_id].children:
                    roots.setdefault(sig.local_name, _Root()).functions.update(functions_of(sig.node_id))
    for obj in objects:
        if obj.WhichOneof("kind") == "resource":
            for child in obj.children:
                init.functions.update(functions_of(child.node_id))
        for saveable in obj.saveable_objects.values():
            init.functions.update(functions_of(saveable.restore_function))
    return roots


def _reachable_nodes(meta_graph: meta_graph_pb2.MetaGraphDef) -> Iterator[tuple[str, node_def_pb2.NodeDef]]:
    """(root, node) for every node reachable from each root, function calls left out (their
    bodies are walked instead)."""
    graph_nodes = {node.name: node for node in meta_graph.graph_def.node}
    library: dict[str, function_pb2.FunctionDef] = {f.signature.name: f for f in meta_graph.graph_def.library.function}

    def called(node: node_def_pb2.NodeDef) -> Iterator[str]:
        if node.op in library:
            yield node.op
        for value in node.attr.values():
            yield from _func_names(value)

    for root_name, root in sorted(_roots(meta_graph).items()):
        seen_nodes: set[str] = set()
        seen_functions: set[str] = set()
        pending_nodes = sorted(root.nodes)
        pending_functions = sorted(root.functions)
        while pending_nodes or pending_functions:
            if pending_nodes:
                name = pending_nodes.pop()
                node = graph_nodes.get(name)
                if node is None or name in seen_nodes:
                    continue
                seen_nodes.add(name)
                body = [node]
                pending_nodes.extend(_node_name(ref) for ref in node.input)
            else:
                function_name = pending_functions.pop()
                function = library.get(function_name)
                if function is None or function_name in seen_functions:
                    continue
                seen_functions.add(function_name)
                body = list(function.node_def)  # all of it: a function's nodes are inputs, outputs or effects
            for node in body:
                pending_functions.extend(called(node))
                if node.op not in library:
                    yield root_name, node
