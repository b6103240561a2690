"""The model off the server: conversion to TFLite (`convert`) and the report on what a
quantization mode costs and buys for one model (`report`)."""
