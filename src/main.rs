fn main() {
    println!("kube-ipvs-proxy: not wired yet");
}
